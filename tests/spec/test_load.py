"""Reading specs: bad input of every kind, positions, overrides, paths, partial validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minispec.errors import SpecError
from minispec.spec.load import (
    MAX_SPEC_BYTES,
    apply_override,
    load_spec,
    load_spec_partial,
    parse_override,
    read_document,
)

REPO = Path(__file__).resolve().parents[2]
TINY_TEACHER = REPO / "tests" / "fixtures" / "teachers" / "tiny-llama"
SPEC = f"""\
version: 1
name: tiny
teacher:
  source: {TINY_TEACHER}
data:
  source: hf://wikitext/wikitext-103-v1
  seq_length: 128
"""


def only_problem(path: Path, overrides=()) -> object:
    loaded, problems = load_spec_partial(path, overrides)
    assert loaded is None and len(problems) == 1, problems
    return problems[0]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# bad input: one clear problem each, nothing written


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("zero.yaml", b"", "the spec is empty"),
        ("binary.yaml", bytes(range(256)) * 8, "binary file (contains NUL bytes)"),
        ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not valid UTF-8 text"),
        ("scalar.yaml", "42\n", "not a single int value"),
        ("word.yaml", "spec\n", "not the single word 'spec'"),
        (
            "huge.yaml",
            "# padding\n" * (MAX_SPEC_BYTES // 10 + 1),
            f"file is over {MAX_SPEC_BYTES} bytes",
        ),
        ("deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 64 levels"),
    ],
)
def test_bad_files_give_one_clear_problem(tmp_path, name, content, says):
    problem = only_problem(write(tmp_path, name, content))
    assert says in problem.message
    assert problem.file == str(tmp_path / name)


def test_missing_path_and_directory(tmp_path):
    assert only_problem(tmp_path / "nope.yaml").message == "no such file"
    assert "is a directory" in only_problem(tmp_path).message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in only_problem(fifo).message


def test_alias_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):  # 10**8 values once expanded
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    problem = only_problem(write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n"))
    assert "expands to over" in problem.message


def test_bad_input_writes_nothing(tmp_path):
    """Linting garbage leaves the directory exactly as it was."""
    bad = write(tmp_path, "bad.yaml", b"\x00\x01garbage")
    before = sorted(tmp_path.rglob("*"))
    load_spec_partial(bad)
    assert sorted(tmp_path.rglob("*")) == before


def test_load_spec_raises_with_every_problem(tmp_path):
    path = write(tmp_path, "s.yaml", SPEC + "seed: -1\nengine: jax\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert {p.key_path for p in info.value.problems} == {"seed", "engine"}
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------------------------
# positions


def test_positions_of_keys_and_items(tmp_path):
    path = write(
        tmp_path, "s.yaml", SPEC + "prune:\n  depth:\n    kind: depth\n    drop_layers: [2, 3]\n"
    )
    _, positions = read_document(path)
    assert positions[("data", "seq_length")] == (7, 3)
    assert positions[("prune", "depth", "drop_layers", 1)] == (11, 22)


def test_json_spec_has_positions(tmp_path):
    path = write(
        tmp_path, "s.json", '{\n  "version": 1,\n  "data": {\n    "seq_length": 128\n  }\n}\n'
    )
    _, positions = read_document(path)
    assert positions[("data", "seq_length")] == (4, 5)


def test_json_with_tab_indentation_is_accepted(tmp_path):
    path = write(tmp_path, "s.json", '{\n\t"version": 1,\n\t"name": "tabs"\n}\n')
    data, _ = read_document(path)
    assert data == {"version": 1, "name": "tabs"}


def test_merged_keys_point_at_their_mapping(tmp_path):
    path = write(tmp_path, "s.yaml", "base: &b {steps: 3}\nfinetune:\n  <<: *b\n  lr: 0.1\n")
    data, positions = read_document(path)
    assert data["finetune"] == {"steps": 3, "lr": 0.1}
    assert positions[("finetune", "steps")] == (3, 3)
    assert positions[("finetune", "lr")] == (4, 3)


@pytest.mark.parametrize("value", ["!!binary aGVsbG8=", "!custom x", "!!set {a, b}"])
def test_tags_beyond_plain_data_are_refused(tmp_path, value):
    problem = only_problem(write(tmp_path, "s.yaml", f"name: {value}\n"))
    assert "not allowed in a spec" in problem.message and problem.line == 1


def test_yaml_1_2_reads_yes_as_text(tmp_path):
    loaded, problems = load_spec_partial(
        write(tmp_path, "s.yaml", SPEC.replace("version: 1", "version: 1\nseed: 1_000"))
    )
    assert not problems and loaded.spec.seed == 1000
    _, problems = load_spec_partial(write(tmp_path, "t.yaml", SPEC + "teacher_extra: 1\n"))
    assert problems[0].key_path == "teacher_extra"


def test_strict_types_refuse_what_the_json_schema_refuses(tmp_path):
    _, problems = load_spec_partial(
        write(tmp_path, "s.yaml", SPEC.replace("seq_length: 128", 'seq_length: "128"'))
    )
    assert [p.message for p in problems] == ["must be an integer (got '128')"]


def test_dollar_schema_key_is_dropped(tmp_path):
    loaded = load_spec(write(tmp_path, "s.yaml", "$schema: ../schema.json\n" + SPEC))
    assert "$schema" not in loaded.raw


# --------------------------------------------------------------------------------------------
# overrides


def test_override_values_are_yaml_typed():
    assert parse_override("finetune.lr=2e-4").value == 2e-4
    assert parse_override("prune.depth.drop_layers=[1, 2]").value == [1, 2]
    assert parse_override("teacher.trust_remote_code=true").value is True
    assert parse_override("name=run-2").value == "run-2"
    assert parse_override("finetune=").value is None
    assert parse_override("data.split_ratio=98,1,1").value == "98,1,1"


def test_override_creates_mappings_and_indexes_lists():
    raw = {"distill": {"students": ["a", "b"]}}
    assert apply_override(raw, parse_override("distill.students.1=c")) is None
    assert apply_override(raw, parse_override("finetune.steps=3")) is None
    assert raw == {"distill": {"students": ["a", "c"]}, "finetune": {"steps": 3}}
    problem = apply_override(raw, parse_override("distill.students.5=x"))
    assert "list of 2 items" in problem.message and problem.file == "--set distill.students.5=x"


def test_override_wins_over_file_and_problems_point_at_it(tmp_path):
    path = write(tmp_path, "s.yaml", SPEC)
    loaded = load_spec(path, ["data.seq_length=256"])
    assert loaded.spec.data.seq_length == 256
    _, problems = load_spec_partial(path, ["data.seq_length=4"])
    assert [p.format() for p in problems] == [
        "--set data.seq_length=4: data.seq_length: must be between 8 and 1048576 (got 4)"
    ]


def test_relative_paths_spec_relative_in_file_cwd_relative_in_overrides(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    path = write(specs, "s.yaml", SPEC.replace("hf://wikitext/wikitext-103-v1", "../data"))
    loaded = load_spec(path)
    assert loaded.spec.data.source == str(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "specs")
    loaded = load_spec(path, ["data.source=local", "teacher=" + f"{{source: {TINY_TEACHER}}}"])
    assert loaded.spec.data.source == str(specs / "local")


# --------------------------------------------------------------------------------------------
# partial validation


def test_partial_spec_keeps_the_units_that_validated(tmp_path):
    text = SPEC + (
        "finetune: {steps: many}\n"
        "prune:\n  good: {kind: depth, drop_layers: [2]}\n  bad: {kind: width, target_hidden_size: 0}\n"
    )
    loaded, problems = load_spec_partial(write(tmp_path, "s.yaml", text))
    assert {p.key_path for p in problems} == {"finetune.steps", "prune.bad.target_hidden_size"}
    assert loaded.invalid == {("finetune",), ("prune", "bad")}
    assert list(loaded.spec.prune) == ["good"]
    assert loaded.spec.data.seq_length == 128
    assert (
        loaded.is_valid("data") and not loaded.is_valid("prune") and not loaded.is_valid("finetune")
    )


def test_keys_must_be_names(tmp_path):
    path = write(tmp_path, "s.yaml", "version: 1\n~: x\n[a, b]: 2\n{c: d}: 3\n")
    loaded, problems = load_spec_partial(path)
    assert loaded is None
    assert [(p.line, p.message) for p in problems] == [
        (2, "a key must be a name, not null"),
        (3, "a key must be a name, not a list"),
        (4, "a key must be a name, not a mapping"),
    ]
