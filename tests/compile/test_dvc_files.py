"""dvc.yaml and params.yaml: deterministic text, loaded and resolved by DVC itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pipeline_harness import QUICKSTART, env, inside

from minispec.compile import compile_pipeline, write_pipeline
from minispec.compile.dvc import STAGE_KEYS, generated_by_minispec, split_header
from minispec.spec.load import load_spec, read_document
from minispec.stage import load_params

# three variants of different shapes: a foreach group whose stages differ in deps and params
MIXED = (
    "prune.depth.target_num_layers=null",
    "prune.depth.drop_layers=[11, 12, 13, 14]",
    "prune.narrow={kind: width, target_hidden_size: 448, importance: magnitude}",
    "distill.students=[width, narrow]",
)


def compiled(tmp_path, *overrides, spec=QUICKSTART):
    return compile_pipeline(load_spec(spec, overrides), tmp_path)


def body(text: str):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(split_header(text)[1])


def test_byte_identical_twice_and_across_processes(tmp_path):
    first = compiled(tmp_path)
    second = compiled(tmp_path)
    assert first.dvc_yaml == second.dvc_yaml and first.params_yaml == second.params_yaml
    # a fresh interpreter with another hash seed (set iteration order) writes the same bytes
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        e = env() | {"PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "minispec", "compile", str(QUICKSTART), "--out", str(out)],
            env=e,
            check=True,
            capture_output=True,
        )
        outputs.append(((out / "dvc.yaml").read_bytes(), (out / "params.yaml").read_bytes()))
    assert outputs[0] == outputs[1]
    assert (
        outputs[0][0].decode()
        == compile_pipeline(load_spec(QUICKSTART), tmp_path / "out1").dvc_yaml
    )


def test_fixed_key_order_sorted_lists_no_empty_fields(tmp_path):
    doc = body(compiled(tmp_path, *MIXED).dvc_yaml)
    assert list(doc) == ["stages", "plots"]
    assert list(doc["stages"]) == [
        "data",
        "import",
        "tokenize",
        "finetune",
        "importance",
        "prune",
        "distill",
        "evaluate",
        "report",
        "export",
    ]
    for name, entry in doc["stages"].items():
        entry = entry.get("do", entry)
        keys = list(entry)
        assert keys == [k for k in STAGE_KEYS if k in keys], name
        for key in ("deps", "params", "outs", "metrics"):
            if key in entry:
                assert entry[key], f"{name}.{key} is empty but written"
                if "foreach" not in doc["stages"][name] or not any(
                    "${item." in str(v) for v in entry[key]
                ):
                    paths = [v if isinstance(v, str) else next(iter(v)) for v in entry[key]]
                    assert paths == sorted(paths), f"{name}.{key} not sorted"
    assert "deps" not in doc["stages"]["data"]  # a hub source: params only


def test_header_names_the_spec_and_hashes_the_body(tmp_path):
    pipeline = compiled(tmp_path, "evaluate.max_windows=8")
    header, _ = split_header(pipeline.dvc_yaml)
    assert header is not None
    assert (
        header.source.startswith(os.path.relpath(QUICKSTART, tmp_path))
        and "--set evaluate.max_windows=8" in header.source
    )
    assert generated_by_minispec(pipeline.dvc_yaml) and generated_by_minispec(pipeline.params_yaml)
    assert not generated_by_minispec(
        pipeline.dvc_yaml.replace("cmd: minispec stage data", "cmd: minispec stage data --x")
    )


def test_params_yaml_is_the_resolved_spec_and_stages_read_it(tmp_path, wikitext_dir):
    pipeline = compiled(tmp_path, f"data.source={wikitext_dir}")
    write_pipeline(pipeline)
    raw, _ = read_document(tmp_path / "params.yaml")
    assert raw["finetune"]["weight_decay"] == 0.01  # a default, filled in
    assert (tmp_path / raw["data"]["source"]).resolve() == wikitext_dir.resolve() and not raw[
        "data"
    ]["source"].startswith("/")  # relative to dvc.yaml
    spec = load_params(tmp_path)
    assert spec == pipeline.spec
    assert spec.finetune.min_lr == 1e-5 and isinstance(spec.finetune.min_lr, float)


def dvc_view(root):
    """Every stage as DVC resolves it: cmd, deps, params, outs (with flags)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with inside(root), Repo(".") as repo:
        view = {}
        for stage in repo.index.stages:
            params = sorted(
                key for d in stage.deps if isinstance(d, ParamsDependency) for key in d.params
            )
            view[stage.addressing] = {
                "cmd": stage.cmd,
                "deps": sorted(
                    {d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)}
                ),
                "params": sorted(set(params)),
                "outs": sorted(
                    (o.def_path, bool(o.use_cache), bool(o.persist), bool(o.metric))
                    for o in stage.outs
                ),
            }
        return view


def expected_view(pipeline):
    import shlex

    view = {}
    for stage in pipeline.stages:
        commands = [shlex.join(argv) for argv in stage.cmd]
        view[stage.name] = {
            "cmd": commands[0] if len(commands) == 1 else commands,
            "deps": sorted(set(stage.deps)),
            "params": sorted(set(stage.params)),
            "outs": sorted(
                [(o.path, o.cache, o.persist, False) for o in stage.outs]
                + [(m.path, m.cache, m.persist, True) for m in stage.metrics]
            ),
        }
    return view


@pytest.mark.parametrize(
    "overrides",
    [(), MIXED, ("finetune=null", "distill=null"), ("distill.teacher_logits={top_k: 32}",)],
    ids=["quickstart", "mixed-variants", "prune-only", "teacher-logits"],
)
def test_dvc_resolves_exactly_the_compiled_stages(tmp_path, overrides):
    from dvc.repo import Repo

    pipeline = compiled(tmp_path, *overrides)
    write_pipeline(pipeline)
    Repo.init(str(tmp_path), no_scm=True)
    assert dvc_view(tmp_path) == expected_view(pipeline)


def test_mixed_variants_use_keyed_foreach(tmp_path):
    doc = body(compiled(tmp_path, *MIXED).dvc_yaml)
    prune = doc["stages"]["prune"]
    assert set(prune["foreach"]) == {"depth", "width", "narrow"}
    assert prune["do"]["cmd"] == "minispec stage prune ${key}"
    assert doc["stages"]["distill"]["foreach"] == ["width", "narrow"]  # uniform: a plain list


def test_dvc_cli_lists_and_addresses_variant_stages(real_run_copy):
    """On a real run: DVC's own commands address the variant stages by their `@` names."""
    from real_pipeline import SPEC_FILE, dvc, minispec

    root = real_run_copy
    listed = dvc(root, "stage", "list", "--name-only").stdout.split()
    assert "prune@width" in listed and "distill@depth" in listed and "export@width" in listed
    # a new width target, compiled but not run: DVC would re-run prune@width, reusing importance
    done = minispec(
        root, "compile", SPEC_FILE, "--out", str(root), "--set", "prune.width.target_hidden_size=32"
    )
    assert done.returncode == 0, done.stderr
    dry = dvc(root, "repro", "--dry", "prune@width").stdout
    assert "Running stage 'prune@width'" in dry and "> minispec stage prune width" in dry
    assert "Stage 'importance' didn't change, skipping" in dry
    assert "prune@depth" not in dry
    dag = dvc(root, "dag", "--md", "distill@width").stdout
    assert "importance" in dag and "prune@width" in dag and "prune@depth" not in dag


def test_dollar_brace_in_a_path_is_taken_literally(tmp_path, wikitext_dir):
    from dvc.repo import Repo

    data = tmp_path / "corpus ${HOME}"
    data.mkdir()
    (data / "validation.jsonl").write_text((wikitext_dir / "validation.jsonl").read_text()[:2000])
    out = tmp_path / "pipe"
    pipeline = compiled(out, f"data.source={data}")
    write_pipeline(pipeline)
    assert "\\${HOME}" in pipeline.dvc_yaml
    Repo.init(str(out), no_scm=True)
    assert dvc_view(out)["data"]["deps"] == ["../corpus ${HOME}"]


def test_quickstart_plots_are_drawn_by_dvc(tmp_path):
    from pipeline_harness import dvc

    pipeline = compiled(tmp_path)
    write_pipeline(pipeline)
    dvc("init", "--no-scm", "-q", cwd=tmp_path)
    curve = tmp_path / "logs/finetune/plots/metrics/train/loss.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("timestamp\tstep\tloss\n0\t0\t3.1\n1\t1\t2.9\n")
    shown = dvc("plots", "show", "--json", cwd=tmp_path).stdout
    assert '"step": "1"' in shown and '"loss": "2.9"' in shown
