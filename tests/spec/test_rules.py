"""Rule machinery beyond the fixtures: what runs on a partial spec, and lint's light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from minispec.engines.torch import lint as torch_lint
from minispec.spec import rules
from minispec.spec.lint import lint_file
from minispec.spec.model import DepthPrune, WidthPrune

REPO = Path(__file__).resolve().parents[2]
TINY_TEACHER = REPO / "tests" / "fixtures" / "teachers" / "tiny-llama"


def test_architectures_match_the_torch_engine():
    from minispec.engines.torch.modeling import SUPPORTED_MODEL_TYPES

    assert torch_lint.SUPPORTED_MODEL_TYPES == SUPPORTED_MODEL_TYPES


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
        "nemo",
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


# the torch engine's declaration (minispec.engines.Engine): what lint and compile read of it
ENGINE_DECLARATION = ["engine", "lint", "commands"]


def test_lint_imports_neither_torch_nor_transformers_nor_the_engines():
    light = [f"minispec.engines.torch.{name}" for name in ENGINE_DECLARATION]
    probe = (
        "import sys\n"
        "from minispec.spec.lint import lint_file\n"
        "assert lint_file('specs/quickstart.yaml').ok\n"
        "from minispec.spec.model import json_schema; json_schema()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy', 'gguf', 'dvc')"
        f" or (m.startswith('minispec.engines.torch.') and m not in {light!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_lint_never_crashes_on_mutated_specs(tmp_path):
    """Seeded mutations of valid specs (wrong types, removed keys, odd values everywhere):
    lint must always answer with located problems, never raise."""
    import random

    from minispec.spec.load import read_document

    rng = random.Random(1234)
    odd_values = [None, -1, 0, 10**12, 2.5, "", "x", True, [], {}, [1, "a"], {"k": 1}, "hf://"]
    valid = sorted((REPO / "tests" / "fixtures" / "specs" / "valid").glob("*.yaml"))
    bases = [read_document(p)[0] for p in valid]
    teachers = str(REPO / "tests" / "fixtures" / "teachers")

    def mutate(node, depth=0):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            roll = rng.random()
            if roll < 0.2:
                del node[key]
            elif roll < 0.6 or depth > 3:
                node[key] = rng.choice(odd_values)
            else:
                mutate(node[key], depth + 1)
        elif isinstance(node, list) and node:
            node[rng.randrange(len(node))] = rng.choice(odd_values)

    import copy
    import json as jsonlib

    for index in range(300):
        data = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            mutate(data)
        spec = tmp_path / f"m{index}.json"
        spec.write_text(jsonlib.dumps(data).replace("../../teachers", teachers))
        result = lint_file(spec)
        for problem in result.problems:
            assert problem.file == str(spec) and problem.message
