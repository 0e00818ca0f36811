"""Rule machinery beyond the fixtures: what runs on a partial spec, and lint's light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from minispec.spec import rules
from minispec.spec.lint import lint_file
from minispec.spec.model import DepthPrune, WidthPrune

REPO = Path(__file__).resolve().parents[2]
TINY_TEACHER = REPO / "tests" / "fixtures" / "teachers" / "tiny-llama"


def test_architectures_match_the_torch_engine():
    from minispec.engines.torch.modeling import SUPPORTED_MODEL_TYPES

    assert rules.SUPPORTED_MODEL_TYPES == SUPPORTED_MODEL_TYPES


def test_unsupported_architecture_is_an_error_on_the_torch_engine_only(tmp_path):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "num_hidden_layers": 2}))
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"version: 1\nname: t\nteacher: {{source: {model}}}\ndata: {{source: hf://x/y, seq_length: 64}}\n"
    )
    problems = lint_file(spec).problems
    assert [p.message for p in problems] == [
        f"the torch engine does not support 'gpt2' models (config.json in {model})"
    ]
    assert lint_file(spec, ["engine=nemo"]).ok


def test_every_rule_declares_what_it_reads():
    assert all(getattr(rule, "needs", None) is not None for rule in rules.RULES)
    assert {block for rule in rules.RULES for block in rule.needs} <= {
        "teacher",
        "data",
        "finetune",
        "prune",
        "distill",
        "evaluate",
        "export",
        "resources",
        "engine",
    }


def test_a_rule_without_needs_runs_only_on_a_complete_spec(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(rules, "RULES", [*rules.RULES, lambda loaded: seen.append(loaded) or []])
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"version: 1\nname: t\nteacher: {{source: {TINY_TEACHER}}}\ndata: {{source: hf://x/y, seq_length: 64}}\n"
    )
    lint_file(spec)
    lint_file(spec, ["seed=-4"])
    assert len(seen) == 1


def test_student_layers():
    assert rules.student_layers(DepthPrune(kind="depth", drop_layers=[1, 2, 2]), 10) == 8
    assert rules.student_layers(DepthPrune(kind="depth", target_num_layers=3), None) == 3
    assert rules.student_layers(DepthPrune(kind="depth", drop_layers=[1]), None) is None
    assert rules.student_layers(WidthPrune(kind="width", target_hidden_size=8), 10) == 10


def test_lint_imports_neither_torch_nor_transformers_nor_the_engines():
    probe = (
        "import sys\n"
        "from minispec.spec.lint import lint_file\n"
        "assert lint_file('specs/quickstart.yaml').ok\n"
        "from minispec.spec.model import json_schema; json_schema()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy', 'gguf', 'dvc')"
        " or m.startswith('minispec.engines.torch.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
