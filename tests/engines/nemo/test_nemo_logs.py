"""NeMo's TensorBoard events → curves and metrics; checkpoint publishing; KD config; evaluation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from minispec import layout
from minispec.cli import cli
from minispec.engines.nemo import evaluate, kd, logs
from minispec.errors import CompileError, StageError
from minispec.fsio import read_metrics_record


def write_events(directory: Path, points: dict[str, list[tuple[int, float]]], start: float) -> None:
    """Event files as Lightning's TensorBoardLogger writes them (real SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(directory))
    for tag, series in points.items():
        for step, value in series:
            writer.add_scalar(tag, value, global_step=step, walltime=start + step)
    writer.close()


def params_yaml(spec, root: Path) -> None:
    (root / layout.PARAMS_FILE).write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )


@pytest.fixture
def finetune_run(tmp_path, load_tutorial):
    """A pipeline directory whose finetune stage ran: NeMo 2 layout, then a resumed second run."""
    spec = load_tutorial().spec
    run = tmp_path / layout.nemo_run_dir("finetune") / "finetune" / "lightning_logs"
    now = time.time()
    write_events(run / "version_0", {
        "reduced_train_loss": [(s, 3.0 - 0.05 * s) for s in range(0, 20)],
        "val_loss": [(9, 2.6), (19, 2.2)],
        "lr": [(s, 1e-4) for s in range(0, 20)],
        "global_step": [(s, float(s)) for s in range(0, 20)],
    }, start=now)  # fmt: skip
    # resumed after a crash at step 20: steps 18-29 logged again, the later values win
    write_events(run / "version_1", {
        "reduced_train_loss": [(s, 2.0 - 0.01 * s) for s in range(18, 30)],
        "val_loss": [(19, 2.1), (29, 1.9)],
    }, start=now + 100)  # fmt: skip
    params_yaml(spec, tmp_path)
    return tmp_path, spec


def test_reader_merges_runs_by_step(finetune_run):
    root, _ = finetune_run
    scalars = logs.read_scalars(root / layout.nemo_run_dir("finetune"))
    train = scalars["reduced_train_loss"]
    assert [p.step for p in train] == list(range(30))
    assert train[5].value == pytest.approx(2.75) and train[18].value == pytest.approx(2.0 - 0.18)
    assert [(p.step, round(p.value, 4)) for p in scalars["val_loss"]] == [
        (9, 2.6),
        (19, 2.1),
        (29, 1.9),
    ]
    assert len(scalars["lr"]) == 20


def test_logs_command_writes_curves_and_metrics(finetune_run, monkeypatch):
    root, spec = finetune_run
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli, ["nemo", "logs", "finetune"])
    assert result.exit_code == 0, result.output
    train = (root / layout.train_curve_path("finetune")).read_text().splitlines()
    assert train[0] == "timestamp\tstep\tloss" and len(train) == 31
    timestamp, step, loss = train[1].split("\t")
    assert int(step) == 0 and float(loss) == pytest.approx(3.0) and int(timestamp) > 1e12  # ms
    val = (root / layout.val_curve_path("finetune")).read_text().splitlines()
    assert [line.split("\t")[1] for line in val[1:]] == ["9", "19", "29"]
    assert (root / layout.log_dir("finetune") / "plots/metrics/train/lr.tsv").is_file()
    assert (
        len(
            list(
                (root / layout.tensorboard_dir("finetune") / "nemo").rglob("events.out.tfevents.*")
            )
        )
        == 2
    )
    metrics = read_metrics_record(root, "finetune")  # numbers and the info file together
    assert metrics["steps"] == 30 and metrics["tokens"] == 30 * 128 * 8192
    assert metrics["final_val_loss"] == pytest.approx(1.9) and metrics["first_val_step"] == 9
    assert metrics["final_val_perplexity"] == pytest.approx(math.exp(1.9), rel=1e-6)
    assert metrics["final_train_loss"] == pytest.approx(2.0 - 0.29)
    assert metrics["initial_val_loss"] is None  # NeMo does not validate before training
    # 29 steps between the first and the last train point, 1 s apart per step in the first run,
    # but the resumed run's steps 18.. are 100 s later: the measured span is 129 s
    assert metrics["tokens_per_second"] == pytest.approx(29 * 128 * 8192 / 129, rel=1e-3)


def test_logs_command_fails_clearly_without_events(tmp_path, load_tutorial, monkeypatch):
    params_yaml(load_tutorial().spec, tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["nemo", "logs", "distill@width"])
    assert result.exit_code == 1 and "no TensorBoard event files" in result.output
    result = CliRunner().invoke(cli, ["nemo", "logs", "prune@width"])
    assert result.exit_code == 1 and "not a training stage" in result.output


def make_checkpoint(path: Path, marker: str) -> Path:
    (path / "context").mkdir(parents=True)
    (path / "weights").mkdir()
    (path / "weights" / "marker").write_text(marker)
    return path


def test_publish_picks_the_last_checkpoint_and_keeps_the_run(tmp_path):
    run = tmp_path / "checkpoints/finetune/finetune/checkpoints"
    make_checkpoint(run / "finetune--val_loss=2.60-step=9-consumed_samples=1280.0", "step 9")
    make_checkpoint(run / "finetune--val_loss=1.90-step=29-consumed_samples=3840.0-last", "step 29")
    target = tmp_path / "models/teacher-corrected"
    logs.publish(tmp_path / "checkpoints/finetune", target, "nemo2")
    assert (target / "weights/marker").read_text() == "step 29" and (target / "context").is_dir()
    assert (
        run / "finetune--val_loss=1.90-step=29-consumed_samples=3840.0-last/weights/marker"
    ).exists()  # copied
    scratch = make_checkpoint(tmp_path / "checkpoints/prune-width/pruned", "pruned")
    logs.publish(scratch, tmp_path / "models/pruned/width", "nemo2")
    assert (tmp_path / "models/pruned/width/weights/marker").read_text() == "pruned"
    assert not (scratch / "weights").exists()  # a scratch output is moved, not copied
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_publish_legacy_and_failures(tmp_path):
    nemo_file = tmp_path / "checkpoints/distill-depth/model.nemo"
    nemo_file.parent.mkdir(parents=True)
    nemo_file.write_bytes(b"tar")
    logs.publish(nemo_file, tmp_path / "models/students/depth", "legacy")
    assert (tmp_path / "models/students/depth/model.nemo").read_bytes() == b"tar"
    with pytest.raises(StageError, match="does not exist"):
        logs.publish(tmp_path / "missing", tmp_path / "models/x", "nemo2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="no NeMo 2 checkpoint"):
        logs.publish(tmp_path / "empty", tmp_path / "models/x", "nemo2")
    assert not (tmp_path / "models/x").exists()


def test_kd_config_is_what_nemo_reads(tmp_path, load_tutorial, monkeypatch):
    spec = load_tutorial().spec
    params_yaml(spec, tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["nemo", "kd-config", "--output", "logs/distill-width/kd_config.yaml"]
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(
        (tmp_path / "logs/distill-width/kd_config.yaml").read_text()
    )  # NeMo: yaml.safe_load
    # exactly the fields of NeMo's DistillationConfig dataclass that a YAML file may set
    assert config == {"logit_layers": ["output_layer", "output_layer"], "intermediate_layer_pairs": [],
                      "skip_lm_loss": True, "kd_loss_scale": 1.0}  # fmt: skip
    spec = load_tutorial("distill.loss.intermediate=[{student_layer: 15, teacher_layer: 31}]").spec
    assert kd.kd_config(spec)["intermediate_layer_pairs"] == [
        ["decoder.layers.14", "decoder.layers.30"]
    ]
    for override in (
        "distill.loss.kind=jsd",
        "distill.loss.temperature=2.0",
        "distill.loss.alpha=0.5",
    ):
        with pytest.raises(CompileError, match="distill.loss"):
            kd.kd_config(load_tutorial(override).spec)


def test_legacy_evaluation_reports_nemo_validation_losses(tmp_path, load_tutorial):
    spec = load_tutorial("nemo.flavor=legacy", "export.students=[]").spec
    (tmp_path / "metrics").mkdir()
    (tmp_path / layout.metrics_path("finetune")).write_text(json.dumps({"final_val_loss": 1.5}))
    (tmp_path / layout.metrics_path("distill@depth")).write_text(
        json.dumps({"final_val_loss": 2.5})
    )
    result = evaluate.run_legacy(spec, tmp_path)
    written = read_metrics_record(tmp_path, "evaluate")  # numbers and the Nones beside them
    assert written == result
    assert written["teacher_corrected"]["validation_loss"] == 1.5
    assert written["students"]["depth"]["validation_perplexity"] == pytest.approx(math.exp(2.5))
    assert written["students"]["width"]["validation_loss"] is None  # its distillation has not run
    assert written["teacher"]["params_total"] is None and written["teacher"]["test_loss"] is None
    assert "| student depth | 2.5000 | 12.18 |" in (tmp_path / layout.EVALUATE_TABLE).read_text()
    # the headline DVC metric: what was measured, nothing for the student not yet distilled
    summary = json.loads((tmp_path / layout.SUMMARY_METRICS).read_text())
    assert summary == {"teacher": {"loss": 1.5}, "depth": {"loss": 2.5}}


def test_nemo2_evaluation_mirrors_the_layout(tmp_path, load_tutorial):
    """The scratch pipeline directory holds each model's export at its layout path."""
    import shutil

    spec = load_tutorial().spec
    for model in (layout.TEACHER_DIR, layout.CORRECTED_TEACHER_DIR, layout.student_dir("depth")):
        make_checkpoint(tmp_path / model, model)
    (tmp_path / "data/tokens").mkdir(parents=True)
    params_yaml(spec, tmp_path)
    exported = []

    def export(checkpoint: Path, output: Path) -> None:  # stands in for llm.export_ckpt's copy
        exported.append(str(checkpoint.relative_to(tmp_path)))
        shutil.copytree(checkpoint, output)

    mirror = evaluate.build_mirror(spec, tmp_path, export)
    assert exported == [
        layout.TEACHER_DIR,
        layout.CORRECTED_TEACHER_DIR,
        layout.student_dir("depth"),
    ]
    assert (
        mirror / layout.student_dir("depth") / "weights/marker"
    ).read_text() == layout.student_dir("depth")
    assert (mirror / "data").resolve() == (tmp_path / "data").resolve()
    assert (mirror / layout.PARAMS_FILE).read_text() == (tmp_path / layout.PARAMS_FILE).read_text()
