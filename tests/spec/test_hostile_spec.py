"""Specs written to hurt: nothing is imported or run, nothing takes long, every problem located."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from minispec.cli import cli
from minispec.spec.lint import lint_file

REPO = Path(__file__).resolve().parents[2]
BASE = """\
version: 1
name: hostile
teacher: {source: teacher}
data: {source: hf://wikitext/wikitext-103-v1}
"""


def write_teacher(root: Path, positions: int = 512) -> None:
    (root / "teacher").mkdir(exist_ok=True)
    (root / "teacher" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 4,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": positions,
                "vocab_size": 100,
            }
        )
    )


def lint(tmp_path: Path, text: str, *overrides: str):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    args = ["lint", str(spec)] + [f"--set={o}" for o in overrides]
    return CliRunner().invoke(cli, args)


def test_pkg_source_with_a_dotted_name_imports_nothing(tmp_path):
    """find_spec('evil.sub') would import evil/__init__.py from the current directory."""
    (tmp_path / "evil").mkdir()
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (tmp_path / "spec.yaml").write_text(
        BASE.replace("{source: teacher}", "{source: 'pkg://evil.sub/x.gguf'}")
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "minispec", "lint", "spec.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert not marker.exists()
    assert result.returncode == 2, result.stderr
    assert "spec.yaml:3:" in result.stderr and "teacher.source" in result.stderr
    assert "is not the name of a top-level Python package" in result.stderr


def test_brackets_hidden_behind_quote_like_plain_scalars_are_refused_fast(tmp_path):
    deep = "[" * 3000 + "]" * 3000
    began = time.monotonic()
    result = lint(tmp_path, BASE + f"x: [a'b, {deep}, c'd]\n")
    assert time.monotonic() - began < 5
    assert result.exit_code == 2
    assert "brackets nested more than 64 levels deep" in result.output


def gguf_with_huge_string_array(path: Path, count: int) -> None:
    """A GGUF v3 header whose tokens array declares ``count`` strings, over a sparse file."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
    header += string("general.architecture") + struct.pack("<I", 8) + string("llama")
    header += string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, count)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(count * 8 + len(header) + 1)  # sparse: zeros, i.e. empty strings


def test_gguf_header_declaring_a_huge_string_array_is_refused_at_once(tmp_path):
    gguf_with_huge_string_array(tmp_path / "t.gguf", 12_000_000_000)  # a ~100 GB sparse file
    began = time.monotonic()
    result = lint(tmp_path, BASE.replace("{source: teacher}", "{source: t.gguf}"))
    assert time.monotonic() - began < 10
    assert result.exit_code == 2, result.output
    assert "teacher.source" in result.output
    assert "declares 12,000,000,000 entries" in result.output


def test_a_5000_digit_integer_is_a_located_error(tmp_path):
    result = lint(tmp_path, BASE + "seed: " + "9" * 5000 + "\n")
    assert result.exit_code == 2, result.output
    assert "spec.yaml:5:7: a number of 5000 digits" in result.output
    assert "Traceback" not in result.output and "ValueError" not in result.output


def test_a_5000_digit_integer_in_json(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"version": 1, "name": "x", "seed": ' + "9" * 5000 + "}")
    result = CliRunner().invoke(cli, ["lint", str(spec)])
    assert result.exit_code == 2 and "a number of 5000 digits" in result.output, result.output


def test_a_nul_byte_in_a_path_is_a_located_error(tmp_path):
    result = lint(tmp_path, BASE.replace("{source: teacher}", '{source: "teach\\0er"}'))
    assert result.exit_code == 2, result.output
    assert (
        "spec.yaml:3:" in result.output
        and "teacher.source: contains a NUL character" in result.output
    )


def test_set_of_an_index_like_key_is_placed_on_the_set(tmp_path):
    write_teacher(tmp_path)
    result = lint(tmp_path, BASE, "prune.0=1")
    assert result.exit_code == 2
    problems = [line for line in result.output.splitlines() if "prune.0" in line]
    assert problems and all(line.startswith("--set prune.0=1: prune.0:") for line in problems)


def test_a_defaulted_seq_length_follows_the_teacher(tmp_path):
    """Not written in the spec: 4096 by default, the teacher's 512 positions when shorter."""
    write_teacher(tmp_path, positions=512)
    (tmp_path / "spec.yaml").write_text(BASE)
    result = lint_file(tmp_path / "spec.yaml")
    assert result.ok, [p.format() for p in result.problems]
    assert result.loaded.spec.data.seq_length == 512
    explicit = BASE.replace("wikitext-103-v1}", "wikitext-103-v1, seq_length: 4096}")
    written = lint(tmp_path, explicit)
    assert written.exit_code == 2
    assert (
        "spec.yaml:4:" in written.output
        and "seq_length 4096 exceeds the teacher's 512" in written.output
    )
