"""The engine registry and the step table: every registered engine implements the Engine
protocol, names only steps of the table, and the compiler builds only the steps it supports."""

from __future__ import annotations

from pathlib import Path

import pytest

from minispec.compile import relative_spec
from minispec.compile.graph import attach_commands, build_graph
from minispec.engines import ENGINE_NAMES, ENGINE_SUMMARIES, Engine, engines_running, get_engine
from minispec.spec.load import load_spec
from minispec.spec.model import prune_kinds
from minispec.steps import BY_NAME, STEP_NAMES, STEPS, VARIANT_STEPS, resolve

REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO / "specs" / "llama31-8b-minitron.yaml"
QUICKSTART = REPO / "specs" / "quickstart.yaml"


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_engine_implements_the_protocol(name):
    engine = get_engine(name)
    for attribute in Engine.__annotations__:
        assert hasattr(engine, attribute), f"{name} engine lacks {attribute}"
    assert callable(engine.stage_commands)
    assert engine.NAME == name
    assert ENGINE_SUMMARIES[name]  # the spec's `engine` description names every engine
    assert engine.STEPS <= set(STEP_NAMES), engine.STEPS - set(STEP_NAMES)
    assert engine.PRUNE_KINDS <= set(prune_kinds())
    for rule in engine.LINT_RULES:
        assert callable(rule) and rule.needs, rule


def test_every_step_names_functions_that_exist():
    for step in STEPS:
        assert callable(resolve(step.run)), step.run
        if step.stages is not None:
            assert callable(resolve(step.stages)), step.stages
    assert set(VARIANT_STEPS) == {s.name for s in STEPS if s.variant}
    assert BY_NAME["distill"].trains and BY_NAME["distill"].distributed


def test_the_torch_engine_runs_every_step_and_kind():
    torch = get_engine("torch")
    assert torch.STEPS == set(STEP_NAMES)
    assert torch.PRUNE_KINDS == set(prune_kinds())
    assert engines_running("search") == ["torch"]


def test_the_graph_holds_only_steps_the_engine_supports(tmp_path):
    for spec_file, engine_name in ((QUICKSTART, "torch"), (LLAMA, "nemo")):
        spec = relative_spec(load_spec(spec_file).spec, tmp_path)
        engine = get_engine(engine_name)
        stages = attach_commands(spec, build_graph(spec))
        assert {s.step for s in stages} <= engine.STEPS
        # the quickstart's width variant is scored by activations: the torch engine has an
        # importance stage, the nemo engine (which scores inside gpt_prune.py) none
        assert ("importance" in {s.step for s in stages}) == (engine_name == "torch")


def test_the_run_asks_the_engine_for_its_warm_stage_server():
    from minispec.pipeline import warm_stages

    with warm_stages("torch", True) as env:
        assert set(env) == {"MINISPEC_STAGE_SERVER", "MINISPEC_STAGE_SERVER_OWNER"}
        directory = Path(env["MINISPEC_STAGE_SERVER"]).parent
        assert directory.is_dir()
    assert not directory.exists()  # removed when the run ends
    with warm_stages("torch", False) as env:
        assert env == {}
    with warm_stages("nemo", True) as env:  # NVIDIA's scripts: every stage starts cold
        assert env == {}
