"""Reports built from a run's real files (DVCLive TSVs, safetensors, metrics JSON)."""

from __future__ import annotations

import base64
import json
import shutil
import struct
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from real_pipeline import NAME, TRAINING_STAGES

from minispec import layout
from minispec.cli import cli
from minispec.report import build_report
from minispec.report.collect import read_dvclive_tsv
from minispec.stage import load_params, run_stage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOG_NAMES = [stage.replace("@", "-") for stage in TRAINING_STAGES]  # logs/<name>, figure names


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must come first."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    spec = load_params(run_dir)
    return build_report(run_dir, tmp_path_factory.mktemp("out") / "reports", spec)


def test_report_files_and_figures_are_valid_pngs(report):
    from PIL import Image

    assert report.markdown.is_file() and report.html.is_file()
    names = sorted(f.name for f in report.figures)
    assert names == sorted(
        [f"val_loss_{s}" for s in LOG_NAMES]
        + [
            "val_loss_all",
            "train_loss_ce",
            "train_loss_kd",
            "depth_importance_depth",
            "width_heads",
            "width_neurons",
            "models",
        ]
    )
    for figure in report.figures:
        data = (report.out_dir / "plots" / figure.file).read_bytes()
        width, height = png_size(data)
        # fixed sizes at 100 dpi: 8 x 4.5 in, 8 x 7 in for two panels, the heatmap 0.25 in a layer
        # (depth importance by block influence has one panel: scores per layer, none per block)
        expected = {"width_neurons": 700, "width_heads": 300}
        assert (width, height) == (800, expected.get(figure.name, 450)), figure.name
        with Image.open(report.out_dir / "plots" / figure.file) as image:
            image.verify()
        with Image.open(report.out_dir / "plots" / figure.file) as image:
            assert image.size == (width, height)
            # not a blank canvas: a drawn figure has many colours
            assert len(image.convert("RGB").getcolors(maxcolors=100_000) or []) > 20


def test_figures_draw_the_expected_curves(report, run_dir):
    index = json.loads((report.out_dir / "plots" / "plots.json").read_text())
    for stage, label in zip(
        LOG_NAMES, ["teacher correction", "student depth", "student width"], strict=True
    ):
        assert index[f"val_loss_{stage}"]["curves"] == [label]
    assert index["val_loss_all"]["curves"] == [
        "teacher correction",
        "student depth",
        "student width",
    ]
    # teacher correction's CE and the students' KD loss are drawn apart
    assert index["train_loss_ce"]["curves"] == ["teacher correction"]
    assert index["train_loss_kd"]["curves"] == ["student depth", "student width"]
    assert index["models"]["curves"] == [
        "teacher",
        "teacher (corrected)",
        "student depth",
        "student width",
    ]
    assert index["depth_importance_depth"]["curves"] == ["per layer"]  # block influence
    assert index["width_heads"]["curves"] == ["layers × heads"]
    # one box per layer (4 layers) and the ranked hidden channels
    assert index["width_neurons"]["curves"] == [f"layer {i} neurons" for i in range(1, 5)] + [
        "channels, ranked"
    ]
    # and the curve drawn is DVCLive's file: every validation point of the run
    steps, values = read_dvclive_tsv(run_dir / layout.val_curve_path("finetune"))
    assert steps == [0, 4, 8] and len(values) == 3  # 8 steps, validated every 4
    curve = report.data.curve("finetune", "val")
    assert (curve.steps, curve.values) == (steps, values)


def test_markdown_table_compares_every_model(report, run_dir):
    evaluation = json.loads((run_dir / "metrics" / "evaluate.json").read_text())
    text = report.markdown.read_text()
    models_section = text.split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = [
        line
        for line in models_section.splitlines()
        if line.startswith("| ") and not line.startswith("| model")
    ]
    assert [r.split(" | ")[0] for r in rows] == [
        "| teacher",
        "| teacher (corrected)",
        "| student depth",
        "| student width",
    ]
    teacher_row = rows[0].split(" | ")
    # the median speed-up with its spread over the timed rounds (slowest–fastest)
    assert teacher_row[-1].startswith("1.00× (") and teacher_row[-1].endswith("×) |")
    assert f"{evaluation['teacher']['validation_loss']:.4f}" in teacher_row
    assert f"{evaluation['teacher']['params_total']:,}" in teacher_row
    depth = evaluation["students"]["depth"]
    speedup = depth["tokens_per_second"] / evaluation["teacher"]["tokens_per_second"]
    assert rows[2].split(" | ")[-1].startswith(f"{speedup:.2f}× (")
    assert f"{depth['test_perplexity']:,.2f}" in rows[2]
    for figure in report.figures:
        assert f"](plots/{figure.file})" in text
    # the same records back the DVC scatter plot
    records = json.loads((report.out_dir / "data" / "models.json").read_text())
    assert [r["model"] for r in records] == [
        "teacher",
        "teacher (corrected)",
        "student depth",
        "student width",
    ]
    assert records[2]["speedup"] == pytest.approx(speedup)


def test_report_shows_samples_and_stage_tables(report, run_dir):
    text = report.markdown.read_text()
    info = json.loads((run_dir / layout.info_path("evaluate")).read_text())
    samples = text.split("## Samples", 1)[1].split("\n## ", 1)[0]
    completion = info["students"]["width"]["samples"][0]["completion"]
    assert f"| student width | {info['students']['width']['samples'][0]['prompt']} |" in samples
    assert completion.strip()[:10] in samples
    assert (
        "## Downstream tasks" not in text
    )  # no evaluate.harness in this run (see test_end_to_end)
    # the students' final train loss is a KD loss, said so next to the CE columns
    training = text.split("## Training", 1)[1].split("\n## ", 1)[0]
    assert " (KD) |" in training and " (CE) |" in training
    # stage numbers as a table, settings and provenance apart from them
    others = text.split("## Other stage metrics", 1)[1].split("\n## ", 1)[0]
    assert (
        "| stage | metric | value |" in others
        and "| prune-width | params_kept_fraction |" in others
    )
    settings = text.split("## Settings and provenance", 1)[1].split("\n## ", 1)[0]
    assert "| finetune | device | cpu |" in settings and "device" not in others


class Resources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def test_html_is_self_contained(report):
    text = report.html.read_text()
    parser = Resources()
    parser.feed(text)
    assert not parser.links and "script" not in parser.tags and "link" not in parser.tags
    assert "http://" not in text and "https://" not in text
    assert len(parser.images) == len(report.figures)
    for src, figure in zip(parser.images, _in_document_order(report), strict=True):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert (
            base64.b64decode(src[len(prefix) :])
            == (report.out_dir / "plots" / figure.file).read_bytes()
        )
    assert "<table>" in text and "student width" in text


def _in_document_order(report):
    text = report.markdown.read_text()
    return sorted(report.figures, key=lambda f: text.index(f"plots/{f.file}"))


def test_html_escapes_names_from_the_run(run_dir, tmp_path):
    root = shutil.copytree(run_dir, tmp_path / "run")
    hostile = root / "logs" / "distill-<img src=x onerror=alert(1)>"
    shutil.copytree(root / "logs" / "distill-depth", hostile)
    report = build_report(root, tmp_path / "out")
    text = report.html.read_text()
    assert "<img src=x" not in text
    assert "student &lt;img src=x onerror=alert(1)&gt;" in text


def test_reruns_are_byte_identical(run_dir, tmp_path):
    spec = load_params(run_dir)
    first = build_report(run_dir, tmp_path / "a", spec)
    second = build_report(run_dir, tmp_path / "b", spec)
    files = sorted(p.relative_to(first.out_dir) for p in first.out_dir.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(second.out_dir) for p in second.out_dir.rglob("*") if p.is_file()
    )
    for rel in files:
        assert (first.out_dir / rel).read_bytes() == (second.out_dir / rel).read_bytes(), rel


def test_partial_run_reports_what_exists(tmp_path):
    """Only teacher correction has run: its curve is reported, the rest is listed as missing."""
    from dvclive import Live

    root = tmp_path / "pipeline"
    with Live(
        dir=str(root / layout.log_dir("finetune")), save_dvc_exp=False, dvcyaml=None, report=None
    ) as live:
        for step in range(5):
            live.log_metric("train/loss", 3.0 - 0.1 * step)
            live.log_metric("val/loss", 3.2 - 0.1 * step)
            live.next_step()
    report = build_report(root)
    assert sorted(f.name for f in report.figures) == ["train_loss_ce", "val_loss_finetune"]
    text = report.markdown.read_text()
    assert "No evaluation results." in text
    assert "metrics/evaluate.json is missing" in text


def test_malformed_inputs_become_notes(run_dir, tmp_path):
    root = shutil.copytree(run_dir, tmp_path / "run")
    (root / layout.val_curve_path("distill-width")).write_text("step\tloss\n0\tnot-a-number\n")
    (root / "metrics" / "finetune.json").write_text("{broken")
    (root / layout.depth_scores_path("depth")).write_text(json.dumps({"per_layer": "high"}))
    (root / layout.width_importance_path()).write_bytes(b"not safetensors")
    report = build_report(root, tmp_path / "out")
    notes = "\n".join(report.data.notes)
    assert f"{layout.val_curve_path('distill-width')}: line 2: not a number" in notes
    assert "metrics/finetune.json: unreadable JSON" in notes
    assert f"{layout.depth_scores_path('depth')}: per_layer must be a list" in notes
    assert f"{layout.width_importance_path()}: unreadable safetensors" in notes
    names = {f.name for f in report.figures}
    assert "val_loss_distill-width" not in names and "width_heads" not in names
    assert "val_loss_finetune" in names


def test_importance_spellings_and_bfloat16(tmp_path):
    """Scores as records / dicts, stacked 2-D tensors and bfloat16 (which numpy cannot read)."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path / "pipeline"
    (root / "importance").mkdir(parents=True)
    (root / layout.depth_scores_path("d")).parent.mkdir(parents=True)
    (root / layout.depth_scores_path("d")).write_text(
        json.dumps(
            {
                "metric": "block_influence",
                "per_layer": [
                    {"layer": 2, "score": 0.5},
                    {"layer": 1, "score": 0.9},
                    {"layer": 3, "score": 0.1},
                ],
                "per_block": {"1-2": 0.7, "2-3": 0.3},
                "dropped_layers": [3],
            }
        )
    )
    save_file(
        {
            "heads": torch.rand(3, 4, dtype=torch.bfloat16),
            "hidden": torch.rand(16, dtype=torch.float16),
        },
        str(root / layout.width_importance_path()),
    )
    report = build_report(root)
    depth = report.data.depth["d"]
    assert depth.per_layer == [0.9, 0.5, 0.1]
    assert depth.per_block == [(1, 2, 0.7), (2, 3, 0.3)]
    assert sorted(report.data.width.heads) == [0, 1, 2] and len(report.data.width.heads[0]) == 4
    assert len(report.data.width.hidden) == 16
    index = json.loads((report.out_dir / "plots" / "plots.json").read_text())
    assert index["width_neurons"]["curves"] == ["channels, ranked"]


def test_report_stage_through_the_stage_registry(run_dir, tmp_path):
    root = shutil.copytree(run_dir, tmp_path / "run")
    run_stage("report", None, root)
    assert (root / layout.REPORT_MARKDOWN).is_file() and (root / layout.REPORT_HTML).is_file()
    assert (root / layout.report_models_path()).is_file()
    assert f"{NAME} — compression report" in (root / layout.REPORT_MARKDOWN).read_text()


def test_cli_report(run_dir, tmp_path):
    root = shutil.copytree(run_dir, tmp_path / "run")
    result = CliRunner().invoke(cli, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output and "10 figures" in result.output
    assert (root / layout.REPORT_HTML).is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["report", str(empty)])
    assert result.exit_code == 1
    assert "error: nothing to report" in result.output and "Traceback" not in result.output


def test_failed_rebuild_keeps_the_old_report(run_dir, tmp_path, monkeypatch):
    root = shutil.copytree(run_dir, tmp_path / "run")
    first = build_report(root)
    before = first.html.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("minispec.report.build.render_html", broken)
    with pytest.raises(RuntimeError):
        build_report(root)
    assert first.html.read_bytes() == before
    assert not [p for p in (root).iterdir() if p.name.startswith(".reports.")]
