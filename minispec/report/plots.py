"""PNG figures of a run, drawn with matplotlib's object API (no pyplot state, Agg canvas).

Each ``plot_*`` function builds one figure, saves it and returns a :class:`FigureInfo` whose
``curves`` are read back from the drawn figure (lines tagged ``gid="curve"``), so tests check
what was actually drawn. Output is byte-stable for the same inputs and matplotlib version:
fixed size and DPI, the default style, and no ``Software`` metadata in the PNG.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from minispec.report.collect import RunData
from minispec.steps import plotted_curves, stage_label

FIG_SIZE = (8.0, 4.5)  # inches
DPI = 100
CURVE = "curve"  # gid of data lines (reference lines use "reference")


@dataclass
class FigureInfo:
    name: str  # file stem under reports/plots/
    title: str
    section: str  # curves | pruning | models
    curves: list[str] = field(default_factory=list)  # labels of the data series drawn
    caption: str = ""

    @property
    def file(self) -> str:
        return f"{self.name}.png"


def draw_all(data: RunData, out_dir: Path) -> list[FigureInfo]:
    """Every figure the inputs allow, in report order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[FigureInfo] = []
    with _style():
        for stage in data.stages:
            if data.curve(stage, "val"):
                figures.append(plot_stage_validation(data, stage, out_dir))
        if sum(1 for s in data.stages if data.curve(s, "val")) > 1:
            figures.append(plot_validation_overlay(data, out_dir))
        # teacher correction minimizes CE (≈ 3–5 nats), distillation a KD loss (≈ 0): apart
        for kind, members in train_loss_groups(data).items():
            figures.append(plot_train_loss(data, out_dir, kind, members))
        for variant in sorted(data.depth):
            figures.append(plot_depth_importance(data, variant, out_dir))
        if data.width and data.width.heads:
            figures.append(plot_head_heatmap(data, out_dir))
        if data.width and (data.width.mlp or data.width.hidden):
            figures.append(plot_neuron_distributions(data, out_dir))
        if any(m.number("params_total") and _model_loss(m) is not None for m in data.models):
            figures.append(plot_models(data, out_dir))
    return figures


# ---- loss curves ----------------------------------------------------------------------------


def plot_stage_validation(data: RunData, stage: str, out_dir: Path) -> FigureInfo:
    """Validation loss vs step of one training stage (the tutorial's per-run figures)."""
    curve = data.curve(stage, "val")
    fig, ax = _figure()
    ax.plot(
        curve.steps, curve.values, marker="o", markersize=3, label=stage_label(stage), gid=CURVE
    )
    reference = _reference_model(data, stage)
    if reference is not None:
        ax.axhline(
            reference[1],
            linestyle="--",
            color="grey",
            linewidth=1,
            label=reference[0],
            gid="reference",
        )
    title = f"Validation loss — {stage_label(stage)}"
    _finish(ax, title, "step", "validation loss")
    return _save(fig, FigureInfo(f"val_loss_{stage}", title, "curves"), out_dir)


def _reference_model(data: RunData, stage: str) -> tuple[str, float] | None:
    """The evaluated loss a stage is read against: the teacher it corrects or distills from."""
    corrects_teacher = plotted_curves(stage) == "CE"  # teacher correction trains on CE
    keys = ["teacher"] if corrects_teacher else ["teacher_corrected", "teacher"]
    for key in keys:
        model = data.model(key)
        if model and model.number("validation_loss") is not None:
            return f"{model.label} (evaluate)", model.number("validation_loss")
    return None


def plot_validation_overlay(data: RunData, out_dir: Path) -> FigureInfo:
    fig, ax = _figure()
    for stage in data.stages:
        curve = data.curve(stage, "val")
        if curve:
            ax.plot(
                curve.steps,
                curve.values,
                marker="o",
                markersize=3,
                label=stage_label(stage),
                gid=CURVE,
            )
    title = "Validation loss — all training stages"
    _finish(ax, title, "step", "validation loss")
    return _save(fig, FigureInfo("val_loss_all", title, "curves"), out_dir)


def train_loss_groups(data: RunData) -> dict[str, list[str]]:
    """Training stages with a train curve, by the loss they minimize: ``ce`` (teacher
    correction) and ``kd`` (distillation), each only when it has a curve."""
    groups: dict[str, list[str]] = {"ce": [], "kd": []}
    for stage in data.stages:
        if data.curve(stage, "train"):
            groups["ce" if plotted_curves(stage) == "CE" else "kd"].append(stage)
    return {kind: stages for kind, stages in groups.items() if stages}


TRAIN_LOSS_TITLES = {
    "ce": ("Training loss — teacher correction (cross-entropy)", "train loss (CE, nats/token)"),
    "kd": ("Training loss — distillation (KD loss)", "train loss (KD objective)"),
}


def plot_train_loss(data: RunData, out_dir: Path, kind: str, stages: list[str]) -> FigureInfo:
    fig, ax = _figure()
    for stage in stages:
        curve = data.curve(stage, "train")
        ax.plot(curve.steps, curve.values, linewidth=1.2, label=stage_label(stage), gid=CURVE)
    title, y_label = TRAIN_LOSS_TITLES[kind]
    _finish(ax, title, "step", y_label)
    return _save(fig, FigureInfo(f"train_loss_{kind}", title, "curves"), out_dir)


# ---- pruning --------------------------------------------------------------------------------


def plot_depth_importance(data: RunData, variant: str, out_dir: Path) -> FigureInfo:
    """Per-layer scores as bars (dropped layers highlighted) and, when present, block scores."""
    scores = data.depth[variant]
    panels = int(bool(scores.per_layer)) + int(bool(scores.per_block))
    fig, axes = _figure(rows=panels, height=FIG_SIZE[1] if panels == 1 else 7.0)
    axes = list(axes) if panels > 1 else [axes]
    metric = scores.metric or "importance"
    info = FigureInfo(
        f"depth_importance_{variant}", f"Depth importance — {variant} ({metric})", "pruning"
    )
    if scores.per_layer:
        ax = axes.pop(0)
        layers = list(range(1, len(scores.per_layer) + 1))
        dropped = set(scores.dropped_layers)
        colors = ["tab:red" if layer in dropped else "tab:blue" for layer in layers]
        ax.bar(layers, scores.per_layer, color=colors, gid=CURVE, label="per layer")
        ax.set_xticks(layers)
        ax.tick_params(axis="x", labelsize=7)
        _finish(
            ax,
            f"{info.title}: per layer (red = dropped)",
            "layer (1-indexed)",
            "block influence (1 − cos)",
            legend=False,
        )
    if scores.per_block:
        ax = axes.pop(0)
        labels = [f"{a}–{b}" for a, b, _ in scores.per_block]
        ax.plot(
            range(len(labels)),
            [s for _, _, s in scores.per_block],
            marker="o",
            gid=CURVE,
            label="per block",
        )
        step = max(1, len(labels) // 16)
        ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=45, fontsize=7)
        _finish(ax, "contiguous block removed", "layers", "LM loss without the block", legend=False)
    return _save(fig, info, out_dir)


def plot_head_heatmap(data: RunData, out_dir: Path) -> FigureInfo:
    """Layers × heads importance (rows: layers 1..L)."""
    import numpy as np

    heads = data.width.heads
    layers = sorted(heads)
    width = max(len(heads[layer]) for layer in layers)
    grid = np.full((len(layers), width), np.nan)
    for row, layer in enumerate(layers):
        grid[row, : len(heads[layer])] = heads[layer]
    fig, ax = _figure(height=max(3.0, min(9.0, 0.25 * len(layers) + 1.5)))
    image = ax.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        gid=CURVE,
        label="layers × heads",
    )
    fig.colorbar(image, ax=ax, label="importance")
    ax.set_yticks(range(len(layers)), [str(layer + 1) for layer in layers], fontsize=7)
    ax.set_xticks(range(width), [str(h + 1) for h in range(width)], fontsize=7)
    title = "Attention head importance (layers × heads)"
    _finish(ax, title, "head (1-indexed)", "layer (1-indexed)", legend=False)
    ax.grid(False)
    return _save(fig, FigureInfo("width_heads", title, "pruning"), out_dir)


def plot_neuron_distributions(data: RunData, out_dir: Path) -> FigureInfo:
    """MLP neuron scores per layer (box plots) and embedding-channel scores sorted, with the
    number of channels each width variant keeps."""
    mlp, hidden = data.width.mlp, data.width.hidden
    panels = int(bool(mlp)) + int(bool(hidden))
    fig, axes = _figure(rows=panels, height=FIG_SIZE[1] if panels == 1 else 7.0)
    axes = list(axes) if panels > 1 else [axes]
    title = "Width importance — neuron and channel scores"
    info = FigureInfo("width_neurons", title, "pruning")
    if mlp:
        ax = axes.pop(0)
        layers = sorted(mlp)
        boxes = ax.boxplot(
            [mlp[layer] for layer in layers],
            tick_labels=[str(layer + 1) for layer in layers],
            showfliers=False,
        )
        # one distribution per layer
        for layer, median in zip(layers, boxes["medians"], strict=True):
            median.set_gid(CURVE)
            median.set_label(f"layer {layer + 1} neurons")
        ax.tick_params(axis="x", labelsize=7)
        if _wide_positive([v for layer in layers for v in mlp[layer]]):
            ax.set_yscale("log")
        _finish(
            ax, "MLP neuron importance per layer", "layer (1-indexed)", "importance", legend=False
        )
    if hidden:
        ax = axes.pop(0)
        ranked = sorted(hidden, reverse=True)
        ax.plot(range(1, len(ranked) + 1), ranked, gid=CURVE, label="channels, ranked")
        for name, targets in sorted(data.width_targets.items()):
            if "target_hidden_size" in targets:
                ax.axvline(
                    targets["target_hidden_size"],
                    linestyle="--",
                    color="tab:red",
                    label=f"{name} keeps {targets['target_hidden_size']}",
                    gid="reference",
                )
        if _wide_positive(ranked):
            ax.set_yscale("log")
        _finish(ax, "Embedding channel importance (ranked)", "rank", "importance")
    return _save(fig, info, out_dir)


def _wide_positive(values: list[float]) -> bool:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return len(positive) == len(values) and bool(positive) and max(positive) / min(positive) > 100


# ---- models ---------------------------------------------------------------------------------


def _model_loss(model) -> float | None:
    return (
        model.number("validation_loss")
        if model.number("validation_loss") is not None
        else model.number("test_loss")
    )


def plot_models(data: RunData, out_dir: Path) -> FigureInfo:
    """Parameters (x) vs validation loss (y); marker area grows with generation throughput."""
    models = [m for m in data.models if m.number("params_total") and _model_loss(m) is not None]
    speeds = [m.number("tokens_per_second") for m in models]
    fastest = max((s for s in speeds if s), default=None)
    fig, ax = _figure()
    for index, (model, speed) in enumerate(zip(models, speeds, strict=True)):
        size = 60 + 540 * (speed / fastest) if speed and fastest else 120
        point = (model.number("params_total") / 1e6, _model_loss(model))
        ax.scatter([point[0]], [point[1]], s=size, alpha=0.7, label=model.label, gid=CURVE)
        text = model.label + (f"\n{speed:,.0f} tok/s" if speed else "")
        # alternate above/below so neighbours (teacher and corrected teacher) stay readable
        offset = (10, 8) if index % 2 == 0 else (10, -24)
        ax.annotate(text, point, textcoords="offset points", xytext=offset, fontsize=8)
    ax.margins(0.25)
    split = "validation" if any(m.number("validation_loss") is not None for m in models) else "test"
    title = f"Parameters vs {split} loss (marker size = tokens/s)"
    _finish(ax, title, "parameters (millions)", f"{split} loss", legend=False)
    return _save(fig, FigureInfo("models", title, "models"), out_dir)


# ---- helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def _style():
    """matplotlib's default style whatever the user's matplotlibrc says; fixed SVG salt."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context({"svg.hashsalt": "minispec"}):
        yield


def _figure(rows: int = 1, height: float = FIG_SIZE[1]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_SIZE[0], height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1) if rows > 1 else fig.subplots()
    return fig, axes


def _finish(ax, title: str, xlabel: str, ylabel: str, *, legend: bool = True) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig, info: FigureInfo, out_dir: Path) -> FigureInfo:
    """Write the PNG and record the data series actually drawn (lines, bars, images, points)."""
    from matplotlib.patches import Rectangle

    for ax in fig.axes:
        for artist in ax.get_children():
            if artist.get_gid() == CURVE and not isinstance(artist, Rectangle):
                info.curves.append(str(artist.get_label()))
        for container in ax.containers:  # a bar series is its container, not each rectangle
            if container.patches and container.patches[0].get_gid() == CURVE:
                info.curves.append(str(container.get_label()))
    fig.savefig(out_dir / info.file, dpi=DPI, format="png", metadata={"Software": None})
    return info
