"""Write a report directory: ``report.md``, ``report.html``, ``plots/*.png`` + ``plots.json``,
``data/*.json`` (the tables behind the figures, also DVC plot sources).

The directory is built beside its destination and renamed into place (``atomic_dir``), so an
old report survives a failed rebuild.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass
from pathlib import Path

from minispec import layout
from minispec.fsio import atomic_dir
from minispec.report.collect import RunData, collect, require_something
from minispec.report.document import build_blocks, model_records, render_html, render_markdown
from minispec.report.plots import FigureInfo, draw_all


def _in_report(path: str) -> str:
    """A ``layout.REPORT_*`` path relative to the report directory (which may be elsewhere)."""
    return posixpath.relpath(path, layout.REPORT_DIR)


MARKDOWN = _in_report(layout.REPORT_MARKDOWN)  # report.md
HTML = _in_report(layout.REPORT_HTML)  # report.html
PLOTS = _in_report(layout.REPORT_PLOTS_DIR)  # plots/
DATA = _in_report(layout.REPORT_DATA_DIR)  # data/
MODELS_RECORDS = _in_report(layout.report_models_path())  # data/models.json


@dataclass
class Report:
    out_dir: Path
    data: RunData
    figures: list[FigureInfo]

    @property
    def markdown(self) -> Path:
        return self.out_dir / MARKDOWN

    @property
    def html(self) -> Path:
        return self.out_dir / HTML


def build_report(root: Path, out_dir: Path | None = None, spec=None) -> Report:
    """Report the run in pipeline directory ``root`` into ``out_dir`` (default ``root/reports``)."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / layout.REPORT_DIR
    data = collect(root, spec)
    require_something(data)
    with atomic_dir(out_dir) as tmp:
        figures = draw_all(data, tmp / PLOTS)
        _write_json(
            tmp / PLOTS / "plots.json", {f.name: {**asdict(f), "file": f.file} for f in figures}
        )
        write_data_files(data, tmp)
        blocks = build_blocks(data, figures)
        (tmp / MARKDOWN).write_text(render_markdown(blocks), encoding="utf-8")
        (tmp / HTML).write_text(render_html(blocks, tmp / PLOTS), encoding="utf-8")
        tmp.chmod(0o755)  # a temp dir is created private; a report is meant to be read
    return Report(out_dir, data, figures)


def write_data_files(data: RunData, out_dir: Path) -> None:
    """JSON records behind the model chart and the depth figures (sources of DVC plots)."""
    data_dir = out_dir / DATA
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / MODELS_RECORDS, model_records(data))
    for variant, scores in sorted(data.depth.items()):
        dropped = set(scores.dropped_layers)
        records = [
            {"layer": i + 1, "score": s, "dropped": i + 1 in dropped}
            for i, s in enumerate(scores.per_layer)
        ]
        _write_json(out_dir / _in_report(layout.report_depth_scores_path(variant)), records)


def _write_json(path: Path, value) -> None:
    path.write_text(
        json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def report_directory(root: Path, out_dir: Path | None = None) -> Report:
    """``minispec report [DIR]``: the spec comes from DIR's params.yaml when there is one."""
    root = Path(root)
    spec = None
    if (root / layout.PARAMS_FILE).is_file():
        from minispec.params import load_params

        spec = load_params(root)
    return build_report(root, out_dir, spec)


def run_stage(spec, variant: str | None, root: Path) -> None:
    """The pipeline's ``report`` stage: report into ``reports/`` of the pipeline directory."""
    report = build_report(root, root / layout.REPORT_DIR, spec)
    print(f"report: {report.markdown.relative_to(root)} ({len(report.figures)} figures)")
