"""Read what a pipeline run left on disk (either engine) into plain data for plots and tables.

Every input is optional: a report of a partial run shows what exists and lists what is missing
or unreadable under "Notes". A file that exists but is malformed is a note too (the report is a
view, not a gate), except when nothing at all can be read, which is an error.

Formats are those of :mod:`minispec.layout`: DVCLive TSV curves, ``metrics/<stage>.json``,
``metrics/evaluate.json``, ``models/pruned/<v>/depth_scores.json`` and ``importance/activations.safetensors``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minispec import layout
from minispec.errors import MinispecError
from minispec.steps import stage_order


@dataclass
class Curve:
    """One DVCLive series: ``steps[i]`` ↔ ``values[i]``."""

    stage: str  # log directory name (layout.log_dir): finetune, distill-<variant>
    split: str  # train | val
    path: str  # relative to the pipeline root
    steps: list[int]
    values: list[float]


@dataclass
class ModelRow:
    """One evaluated model: its display name and the metrics evaluate wrote for it."""

    key: str  # teacher | teacher_corrected | student:<variant>
    label: str
    metrics: dict[str, Any]

    def number(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            return None
        return float(value)


@dataclass
class DepthScores:
    variant: str
    metric: str | None
    per_layer: list[float]  # index i ↔ layer i + 1
    per_block: list[tuple[int, int, float]]  # (start, end) 1-indexed inclusive, score
    dropped_layers: list[int]


@dataclass
class WidthScores:
    mlp: dict[int, list[float]]  # 0-based layer → neuron scores
    heads: dict[int, list[float]]  # 0-based layer → head scores
    hidden: list[float]


@dataclass
class RunData:
    root: Path
    title: str
    engine: str | None = None
    teacher_source: str | None = None
    curves: dict[tuple[str, str], Curve] = field(default_factory=dict)
    stage_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # layout.info_path files
    evaluation_info: dict[str, Any] = field(default_factory=dict)  # samples, settings, provenance
    models: list[ModelRow] = field(default_factory=list)
    depth: dict[str, DepthScores] = field(default_factory=dict)
    width: WidthScores | None = None
    width_targets: dict[str, dict[str, int]] = field(default_factory=dict)  # variant → targets
    notes: list[str] = field(default_factory=list)

    @property
    def stages(self) -> list[str]:
        """Training stages with a curve: teacher correction first, then students by name."""
        return sort_stages({stage for stage, _ in self.curves})

    def curve(self, stage: str, split: str) -> Curve | None:
        return self.curves.get((stage, split))

    def model(self, key: str) -> ModelRow | None:
        return next((m for m in self.models if m.key == key), None)

    @property
    def is_empty(self) -> bool:
        return not (self.curves or self.stage_metrics or self.models or self.depth or self.width)


def sort_stages(stages: set[str] | list[str]) -> list[str]:
    """Teacher correction first, then the students by name, then the other stages by name (the
    step table's ``curves`` steps, in its order)."""
    return sorted(stages, key=stage_order)


# --------------------------------------------------------------------------------------------


def collect(root: Path, spec=None) -> RunData:
    """Everything the report shows, read from the pipeline directory ``root``."""
    root = Path(root)
    data = RunData(root=root, title=spec.name if spec is not None else root.resolve().name)
    if spec is not None:
        data.engine = spec.engine
        data.teacher_source = spec.teacher.source
        data.width_targets = {
            name: {
                k: v
                for k, v in variant.model_dump().items()
                if k.startswith("target_") and v is not None
            }
            for name, variant in sorted(spec.width_variants.items())
        }
    read_curves(data)
    read_stage_metrics(data)
    read_evaluation(data)
    read_depth_scores(data)
    read_width_scores(data)
    return data


def read_curves(data: RunData) -> None:
    logs = data.root / layout.LOGS_DIR
    if not logs.is_dir():
        data.notes.append(f"no training logs ({layout.LOGS_DIR}/ is missing)")
        return
    for stage_dir in sorted(p for p in logs.iterdir() if p.is_dir()):
        stage = stage_dir.name
        for split, rel in (
            ("train", layout.train_curve_path(stage)),
            ("val", layout.val_curve_path(stage)),
        ):
            path = data.root / rel
            if not path.is_file():
                continue
            try:
                steps, values = read_dvclive_tsv(path)
            except ValueError as exc:
                data.notes.append(f"{rel}: {exc}")
                continue
            if steps:
                data.curves[(stage, split)] = Curve(stage, split, rel, steps, values)


def read_dvclive_tsv(path: Path) -> tuple[list[int], list[float]]:
    """``step`` and the metric column of a DVCLive TSV (``[timestamp] step <name>``)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows:
        return [], []
    header = rows[0]
    if "step" not in header:
        raise ValueError(
            f"no 'step' column in header {header!r} (expected DVCLive's TSV: timestamp, step, <metric>)"
        )
    value_columns = [i for i, name in enumerate(header) if name not in ("step", "timestamp")]
    if len(value_columns) != 1:
        raise ValueError(f"expected one metric column besides step/timestamp, found {header!r}")
    step_col, value_col = header.index("step"), value_columns[0]
    steps: list[int] = []
    values: list[float] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            steps.append(int(float(row[step_col])))
            values.append(float(row[value_col]))
        except (IndexError, ValueError):
            raise ValueError(f"line {line_no}: not a number in {row!r}") from None
    return steps, values


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable JSON ({exc})") from None


def read_stage_metrics(data: RunData) -> None:
    metrics_dir = data.root / layout.METRICS_DIR
    if not metrics_dir.is_dir():
        data.notes.append(f"no stage metrics ({layout.METRICS_DIR}/ is missing)")
        return
    for path in sorted(metrics_dir.glob("*.json")):
        if path.stem == "evaluate":
            continue
        try:
            value = read_json(path)
        except ValueError as exc:
            data.notes.append(f"{layout.METRICS_DIR}/{path.name}: {exc}")
            continue
        if isinstance(value, dict):
            data.stage_metrics[path.stem] = value
    read_stage_info(data)


def read_stage_info(data: RunData) -> None:
    """Settings and provenance beside the metrics (``layout.info_path``; absent in older runs)."""
    info_dir = data.root / Path(layout.info_path("x")).parent
    for path in sorted(info_dir.glob("*.json")) if info_dir.is_dir() else []:
        try:
            value = read_json(path)
        except ValueError as exc:
            data.notes.append(f"{path.relative_to(data.root)}: {exc}")
            continue
        if not isinstance(value, dict):
            continue
        if path.stem == "evaluate":
            data.evaluation_info = value
        elif path.stem != Path(layout.HARNESS_SCORES).stem:
            data.stage_info[path.stem] = value


def read_evaluation(data: RunData) -> None:
    rel = layout.metrics_path("evaluate")
    path = data.root / rel
    if not path.is_file():
        data.notes.append(f"no evaluation ({rel} is missing): the model comparison is empty")
        return
    try:
        value = read_json(path)
    except ValueError as exc:
        data.notes.append(f"{rel}: {exc}")
        return
    if not isinstance(value, dict):
        data.notes.append(f"{rel}: expected a JSON object with teacher/teacher_corrected/students")
        return
    for key, label in (("teacher", "teacher"), ("teacher_corrected", "teacher (corrected)")):
        if isinstance(value.get(key), dict):
            data.models.append(ModelRow(key, label, value[key]))
    students = value.get("students") or {}
    if not isinstance(students, dict):
        data.notes.append(f"{rel}: 'students' is not an object")
        students = {}
    for name in sorted(students):
        if isinstance(students[name], dict):
            data.models.append(ModelRow(f"student:{name}", f"student {name}", students[name]))


# ---- importance -----------------------------------------------------------------------------


def read_depth_scores(data: RunData) -> None:
    """Depth importance of every variant chosen by importance (``layout.depth_scores_path``)."""
    pruned = data.root / layout.PRUNED_DIR
    if not pruned.is_dir():
        return
    for folder in sorted(p for p in pruned.iterdir() if p.is_dir()):
        variant = folder.name
        rel = layout.depth_scores_path(variant)
        if not (data.root / rel).is_file():
            continue
        try:
            scores = parse_depth_scores(variant, read_json(data.root / rel))
        except ValueError as exc:
            data.notes.append(f"{rel}: {exc}")
            continue
        data.depth[variant] = scores


def parse_depth_scores(variant: str, raw: Any) -> DepthScores:
    """Accept the layout's format and its obvious spellings (lists of records, dicts by layer)."""
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object with per_layer / per_block / dropped_layers")
    per_layer = _per_layer(raw.get("per_layer"))
    per_block = _per_block(raw.get("per_block"))
    dropped = raw.get("dropped_layers") or []
    if not (isinstance(dropped, list) and all(isinstance(x, int) for x in dropped)):
        raise ValueError("dropped_layers must be a list of 1-indexed layer numbers")
    if not per_layer and not per_block:
        raise ValueError("neither per_layer nor per_block scores found")
    metric = raw.get("metric") if isinstance(raw.get("metric"), str) else None
    return DepthScores(variant, metric, per_layer, per_block, sorted(dropped))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what}: {value!r} is not a number")
    return float(value)


def _per_layer(raw: Any) -> list[float]:
    if raw is None:
        return []
    if isinstance(raw, dict):  # {"1": s, "2": s, ...}
        try:
            items = sorted((int(k), v) for k, v in raw.items())
        except ValueError:
            raise ValueError("per_layer keys must be layer numbers") from None
        return [_number(v, f"per_layer[{k}]") for k, v in items]
    if isinstance(raw, list):
        if all(isinstance(x, dict) for x in raw):  # [{"layer": 1, "score": s}, ...]
            items = sorted((int(x.get("layer", 0)), x.get("score")) for x in raw)
            return [_number(v, f"per_layer layer {k}") for k, v in items]
        return [_number(v, f"per_layer[{i}]") for i, v in enumerate(raw)]
    raise ValueError("per_layer must be a list of scores")


def _per_block(raw: Any) -> list[tuple[int, int, float]]:
    if raw is None:
        return []
    blocks: list[tuple[int, int, float]] = []
    if isinstance(raw, dict):  # {"16-31": s}
        for key, score in raw.items():
            start, _, end = str(key).partition("-")
            try:
                blocks.append((int(start), int(end or start), _number(score, f"per_block[{key}]")))
            except ValueError:
                raise ValueError(f"per_block key {key!r} is not 'start-end'") from None
    elif isinstance(raw, list):
        for i, block in enumerate(raw):
            if not isinstance(block, dict):
                raise ValueError(f"per_block[{i}] must be an object with start, end, score")
            if "layers" in block and block["layers"]:
                start, end = min(block["layers"]), max(block["layers"])
            else:
                start, end = block.get("start"), block.get("end", block.get("start"))
            if not isinstance(start, int) or not isinstance(end, int):
                raise ValueError(f"per_block[{i}] has no integer start/end (or layers)")
            blocks.append((start, end, _number(block.get("score"), f"per_block[{i}].score")))
    else:
        raise ValueError("per_block must be a list of {start, end, score}")
    return sorted(blocks)


KEY_PATTERNS = {
    "mlp": re.compile("^" + re.escape(layout.WIDTH_MLP_KEY).replace(r"\{layer\}", r"(\d+)") + "$"),
    "heads": re.compile(
        "^" + re.escape(layout.WIDTH_HEADS_KEY).replace(r"\{layer\}", r"(\d+)") + "$"
    ),
}


def read_width_scores(data: RunData) -> None:
    rel = layout.width_importance_path()
    path = data.root / rel
    if not path.is_file():
        return
    try:
        tensors = load_safetensors(path)
    except Exception as exc:  # a corrupt or foreign file: the report says so and goes on
        data.notes.append(f"{rel}: unreadable safetensors ({exc})")
        return
    width = WidthScores(mlp={}, heads={}, hidden=[])
    for key, array in tensors.items():
        for kind, pattern in KEY_PATTERNS.items():
            match = pattern.match(key)
            if match and array.ndim == 1:
                getattr(width, kind)[int(match[1])] = array.tolist()
        if key in ("mlp", "heads") and array.ndim == 2:  # stacked [layers, n]
            getattr(width, key).update({i: row.tolist() for i, row in enumerate(array)})
    if layout.WIDTH_HIDDEN_KEY in tensors:
        width.hidden = tensors[layout.WIDTH_HIDDEN_KEY].reshape(-1).tolist()
    if not (width.mlp or width.heads or width.hidden):
        data.notes.append(
            f"{rel}: no keys of the form {layout.WIDTH_MLP_KEY}, {layout.WIDTH_HEADS_KEY} or "
            f"{layout.WIDTH_HIDDEN_KEY} (found {', '.join(sorted(tensors)[:8]) or 'none'})"
        )
        return
    data.width = width


def load_safetensors(path: Path) -> dict[str, Any]:
    """float32 numpy arrays; bfloat16/float16 files go through torch, which numpy cannot read."""
    try:
        from safetensors.numpy import load_file

        return {k: v.astype("float32") for k, v in load_file(str(path)).items()}
    except TypeError:  # numpy has no bfloat16
        from safetensors.torch import load_file as load_torch

        return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}


def require_something(data: RunData) -> None:
    if data.is_empty:
        raise MinispecError(
            f"nothing to report in {data.root}: no training curves, metrics or importance scores",
            hint="run `minispec report` in the directory of the compiled dvc.yaml after the pipeline ran (or pass it as DIR)",
        )
