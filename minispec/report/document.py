"""The report as a list of blocks, rendered to Markdown and to one self-contained HTML file.

Both renderings come from the same blocks, so they always say the same thing. The HTML embeds
every figure as a ``data:image/png;base64`` URI and loads nothing from elsewhere; every piece of
text from the run (names, paths, notes) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from minispec.report.blocks import Block
from minispec.report.collect import ModelRow, RunData, sort_stages
from minispec.report.plots import FigureInfo
from minispec.steps import plotted_curves, stage_label

SPLITS = ("validation", "test")
TRAINING_COLUMNS = (
    ("steps", "steps", "int"),
    ("tokens", "tokens", "int"),
    ("initial_val_loss", "initial val loss", "loss"),
    ("final_val_loss", "final val loss", "loss"),
    ("final_train_loss", "final train loss", "loss"),
    ("tokens_per_second", "tokens/s", "speed"),
)


# ---- numbers --------------------------------------------------------------------------------


def fmt(value: Any, kind: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    if kind == "params":
        if value >= 1e9:
            return f"{value / 1e9:,.2f} B"
        return f"{value / 1e6:,.2f} M" if value >= 1e6 else f"{int(value):,}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "ppl":
        return f"{value:,.2f}"
    if kind == "speed":
        return f"{value:,.1f}"
    if kind == "ratio":
        return f"{value:.2f}×"
    if kind == "seconds":
        return f"{value:.3f}"
    return f"{value:g}"


def model_records(data: RunData) -> list[dict[str, Any]]:
    """The comparison table as records (teacher first, then corrected teacher, students by name)."""
    teacher = data.model("teacher")
    base_speed = teacher.number("tokens_per_second") if teacher else None
    records = []
    for model in data.models:
        record: dict[str, Any] = {"model": model.label}
        for key in ("params_total", "params_non_embedding"):
            record[key] = model.number(key)
        for split in SPLITS:
            for metric in ("loss", "perplexity"):
                record[f"{split}_{metric}"] = model.number(f"{split}_{metric}")
        record["tokens_per_second"] = model.number("tokens_per_second")
        record["latency_seconds"] = model.number("latency_seconds")
        speed = record["tokens_per_second"]
        record["speedup"] = speed / base_speed if speed and base_speed else None
        # the spread over the timed rounds (evaluate.speed_repeats): slowest and fastest round
        low, high = model.number("min_tokens_per_second"), model.number("max_tokens_per_second")
        record["min_tokens_per_second"], record["max_tokens_per_second"] = low, high
        record["speedup_min"] = (
            low / base_high
            if low and (base_high := _number(teacher, "max_tokens_per_second"))
            else None
        )
        record["speedup_max"] = (
            high / base_low
            if high and (base_low := _number(teacher, "min_tokens_per_second"))
            else None
        )
        records.append(record)
    return records


def _number(model: ModelRow | None, key: str) -> float | None:
    return model.number(key) if model is not None else None


def _with_range(value: Any, low: Any, high: Any, kind: str) -> str:
    """``median (min–max)`` when a spread was measured, else the value alone."""
    text = fmt(value, kind)
    if low is None or high is None or text == "–":
        return text
    return f"{text} ({fmt(low, kind)}–{fmt(high, kind)})"


def _splits_present(models: list[ModelRow]) -> list[str]:
    return [s for s in SPLITS if any(m.number(f"{s}_loss") is not None for m in models)]


def models_table(data: RunData) -> Block:
    splits = _splits_present(data.models)
    header = ["model", "parameters", "non-embedding parameters"]
    for split in splits:
        header += [f"{split} loss", f"{split} perplexity"]
    header += ["tokens/s", "speed-up vs teacher"]
    rows = []
    for record in model_records(data):
        row = [
            record["model"],
            fmt(record["params_total"], "params"),
            fmt(record["params_non_embedding"], "params"),
        ]
        for split in splits:
            row += [fmt(record[f"{split}_loss"], "loss"), fmt(record[f"{split}_perplexity"], "ppl")]
        row += [
            _with_range(
                record["tokens_per_second"],
                record["min_tokens_per_second"],
                record["max_tokens_per_second"],
                "speed",
            ),
            _with_range(record["speedup"], record["speedup_min"], record["speedup_max"], "ratio"),
        ]
        rows.append(tuple(row))
    return Block("table", header=tuple(header), rows=tuple(rows))


def training_table(data: RunData) -> Block | None:
    stages = sort_stages([s for s in data.stage_metrics if plotted_curves(s)])
    if not stages:
        return None
    header = ("stage",) + tuple(label for _, label, _ in TRAINING_COLUMNS)
    rows = tuple(
        (stage_label(stage),)
        + tuple(
            training_cell(stage, key, data.stage_metrics[stage].get(key), kind)
            for key, _, kind in TRAINING_COLUMNS
        )
        for stage in stages
    )
    return Block("table", header=header, rows=rows)


def training_cell(stage: str, key: str, value: Any, kind: str) -> str:
    """A training table cell; the final train loss says which loss it is (CE for teacher
    correction, the KD objective for a student: not comparable with the CE columns)."""
    text = fmt(value, kind)
    if key == "final_train_loss" and text != "–":
        text += f" ({plotted_curves(stage)})"
    return text


def other_metrics(data: RunData) -> Block | None:
    """Numbers of the other stages (prune, ...) as one table: stage, metric, value."""
    rows = []
    for stage in sorted(data.stage_metrics):
        if plotted_curves(stage):  # in the training table
            continue
        for key, value in _flatten(data.stage_metrics[stage]):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((stage, key, _metric_text(key, value)))
    if not rows:
        return None
    return Block("table", header=("stage", "metric", "value"), rows=tuple(rows))


def _metric_text(key: str, value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    if "loss" in key:
        return f"{value:.4f}"
    return f"{value:.4g}"


def provenance(data: RunData) -> Block | None:
    """Settings and provenance of every stage (the info files): how each number was made."""
    rows = []
    for stage in sort_stages(list(data.stage_info)):
        for key, value in _flatten(data.stage_info[stage]):
            rows.append((stage, key, "–" if value is None else str(value)))
    if not rows:
        return None
    return Block("table", header=("stage", "setting", "value"), rows=tuple(rows))


def harness_table(data: RunData) -> Block | None:
    """lm-evaluation-harness scores per model (± lm-eval's standard error)."""
    columns: list[tuple[str, str]] = []
    for model in data.models:
        for task, values in (model.metrics.get("harness") or {}).items():
            for metric in values:
                if not metric.endswith("_stderr") and (task, metric) not in columns:
                    columns.append((task, metric))
    if not columns:
        return None
    rows = []
    for model in data.models:
        row = [model.label]
        for task, metric in columns:
            values = (model.metrics.get("harness") or {}).get(task, {})
            value, stderr = values.get(metric), values.get(f"{metric}_stderr")
            cell = fmt(value, "loss")
            if stderr and cell != "–":
                cell += f" ± {stderr:.4f}"
            row.append(cell)
        rows.append(tuple(row))
    header = ("model",) + tuple(f"{task} {metric}" for task, metric in columns)
    return Block("table", header=header, rows=tuple(rows))


def samples_table(data: RunData) -> Block | None:
    """The greedy continuations the evaluate stage generated, per model and prompt."""
    info = data.evaluation_info
    entries = [
        ("teacher", info.get("teacher")),
        ("teacher (corrected)", info.get("teacher_corrected")),
    ]
    entries += [(f"student {name}", m) for name, m in sorted((info.get("students") or {}).items())]
    rows = []
    for label, entry in entries:
        for sample in (entry or {}).get("samples") or []:
            if isinstance(sample, dict):
                rows.append(
                    (label, str(sample.get("prompt", "")), str(sample.get("completion", "")))
                )
    if not rows:
        return None
    return Block("table", header=("model", "prompt", "greedy continuation"), rows=tuple(rows))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key in sorted(value, key=str):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, (int, float, str, bool)) or value is None:
        return [(prefix, value)]
    if (
        isinstance(value, list)
        and len(value) <= 32
        and all(isinstance(v, (int, float, str)) for v in value)
    ):
        return [(prefix, value)]
    return [(prefix, f"<{type(value).__name__} of {len(value)}>")]


# ---- blocks ---------------------------------------------------------------------------------


def build_blocks(data: RunData, figures: list[FigureInfo]) -> list[Block]:
    blocks = [Block("h1", f"{data.title} — compression report")]
    facts = []
    if data.engine:
        facts.append(f"engine: {data.engine}")
    if data.teacher_source:
        facts.append(f"teacher: {data.teacher_source}")
    if facts:
        blocks.append(Block("p", " · ".join(facts)))

    blocks.append(Block("h2", "Models"))
    if data.models:
        blocks.append(models_table(data))
        blocks.append(
            Block(
                "p",
                "Losses are mean token cross-entropy (nats) in seq_length windows; perplexity is its "
                "exponential. Tokens/s is generation throughput measured by the evaluate stage: the "
                "median of its timed rounds over the prompts (slowest–fastest round in brackets); "
                "speed-up is relative to the original teacher (its range pairs the extreme rounds).",
            )
        )
    else:
        blocks.append(Block("p", "No evaluation results."))
    by_section = {
        s: [f for f in figures if f.section == s] for s in ("models", "curves", "pruning")
    }
    for figure in by_section["models"]:
        blocks.append(Block("figure", figure=figure))
    harness = harness_table(data)
    if harness:
        blocks += [Block("h2", "Downstream tasks (lm-evaluation-harness)"), harness]
    samples = samples_table(data)
    if samples:
        blocks += [Block("h2", "Samples"), samples]

    training = training_table(data)
    if training or by_section["curves"]:
        blocks.append(Block("h2", "Training"))
        if training:
            blocks.append(training)
        for figure in by_section["curves"]:
            blocks += [Block("h3", figure.title), Block("figure", figure=figure)]

    if by_section["pruning"]:
        blocks.append(Block("h2", "Pruning"))
        for figure in by_section["pruning"]:
            blocks += [Block("h3", figure.title), Block("figure", figure=figure)]

    from minispec.search.report import search_blocks

    blocks += search_blocks(data)  # one table per search variant (kind: search)
    others = other_metrics(data)
    if others:
        blocks += [Block("h2", "Other stage metrics"), others]
    settings = provenance(data)
    if settings:
        blocks += [Block("h2", "Settings and provenance"), settings]
    if data.notes:
        blocks += [Block("h2", "Notes"), Block("list", items=tuple(data.notes))]
    return blocks


# ---- rendering ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], plots_rel: str = "plots") -> str:
    out: list[str] = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            out.append("#" * int(block.kind[1]) + " " + block.text)
        elif block.kind == "p":
            out.append(block.text)
        elif block.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(block.header) - 1)) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        elif block.kind == "figure":
            out.append(f"![{_md_cell(block.figure.title)}]({plots_rel}/{block.figure.file})")
        elif block.kind == "list":
            out += [f"- {item}" for item in block.items]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
li { font-family: ui-monospace, monospace; font-size: 0.85rem; }
"""


def render_html(blocks: list[Block], plots_dir: Path) -> str:
    esc = html.escape
    title = next((b.text for b in blocks if b.kind == "h1"), "minispec report")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
    ]
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            out.append(f"<{block.kind}>{esc(block.text)}</{block.kind}>")
        elif block.kind == "p":
            out.append(f"<p>{esc(block.text)}</p>")
        elif block.kind == "table":
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>")
            out += [
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows
            ]
            out.append("</table>")
        elif block.kind == "figure":
            encoded = base64.b64encode((plots_dir / block.figure.file).read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{esc(block.figure.title)}" src="data:image/png;base64,{encoded}"></figure>'
            )
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
