"""NeMo's TensorBoard events → the loss curves and metrics files both engines write.

NeMo (2 and 1) trains with Lightning and logs scalars to TensorBoard under its run directory
(``<log_dir>/<name>/...`` for NeMo 2's ``gpt_train.py``, ``<exp_dir>/<name>/...`` for NeMo 1's
exp_manager). The tags, from NeMo's sources:

    reduced_train_loss   training loss of each step (MegatronStrategy.training_step; NeMo 1 model)
    val_loss             validation loss (MegatronStrategy.validation_step; NeMo 1 model)
    lr                   learning rate, when the optimizer module logs it
    consumed_samples, global_batch_size, global_step, grad_norm   (not needed here)

Steps are TensorBoard's steps as NeMo logged them. A resumed run writes a second event file; a
step seen twice keeps its latest value. Files written (see :mod:`minispec.layout`):

    logs/<stage>/plots/metrics/train/loss.tsv, val/loss.tsv, train/lr.tsv   DVCLive's TSV format
    logs/<stage>/tb/nemo/                                                   NeMo's own event files
    metrics/<stage>.json                                                    the run's summary

NeMo validates first after ``val_interval`` steps, not before training, so ``initial_val_loss``
is ``null`` here and the first measured point is given as ``first_val_loss``/``first_val_step``.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from minispec import layout
from minispec.errors import StageError
from minispec.fsio import atomic_dir, write_metrics, write_text_atomic

TRAIN_LOSS_TAG = "reduced_train_loss"
VAL_LOSS_TAG = "val_loss"
LR_TAG = "lr"
EVENT_GLOB = "events.out.tfevents.*"


@dataclass(frozen=True)
class LogTags:
    """The TensorBoard tags of a flavor's training loss, validation loss and learning rate."""

    train_loss: str = TRAIN_LOSS_TAG
    val_loss: str = VAL_LOSS_TAG
    lr: str = LR_TAG


NEMO_TAGS = LogTags()


@dataclass(frozen=True)
class Point:
    step: int
    wall_time: float  # seconds since the epoch
    value: float


def event_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob(EVENT_GLOB) if p.is_file())


def read_scalars(
    run_dir: str | Path, tags: tuple[str, ...] = (TRAIN_LOSS_TAG, VAL_LOSS_TAG, LR_TAG)
) -> dict[str, list[Point]]:
    """Every point of ``tags`` in all event files under ``run_dir``, by step; latest write wins."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    run_dir = Path(run_dir)
    by_tag: dict[str, dict[int, Point]] = {tag: {} for tag in tags}
    for path in event_files(run_dir):
        accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0})  # 0: keep every point
        accumulator.Reload()
        available = set(accumulator.Tags().get("scalars", []))
        for tag in tags:
            if tag not in available:
                continue
            for event in accumulator.Scalars(tag):
                point = Point(int(event.step), float(event.wall_time), float(event.value))
                seen = by_tag[tag].get(point.step)
                if seen is None or point.wall_time >= seen.wall_time:
                    by_tag[tag][point.step] = point
    return {tag: [points[step] for step in sorted(points)] for tag, points in by_tag.items()}


def dvclive_tsv(points: list[Point], name: str) -> str:
    """DVCLive's plot format: ``timestamp`` (ms), ``step``, value column named after the metric."""
    lines = [f"timestamp\tstep\t{name}"]
    lines += [f"{int(round(p.wall_time * 1000))}\t{p.step}\t{p.value!r}" for p in points]
    return "\n".join(lines) + "\n"


def summarize(
    scalars: dict[str, list[Point]],
    *,
    global_batch_size: int,
    seq_length: int,
    tags: LogTags = NEMO_TAGS,
) -> dict:
    """``metrics/<stage>.json`` of a NeMo training run (same keys as the torch engine's)."""
    train = scalars.get(tags.train_loss, [])
    val = scalars.get(tags.val_loss, [])
    steps = len(train)  # one point per optimizer step (log_interval 1)
    tokens_per_step = global_batch_size * seq_length
    throughput = None
    if len(train) >= 2 and train[-1].wall_time > train[0].wall_time:
        timed_tokens = (train[-1].step - train[0].step) * tokens_per_step
        throughput = timed_tokens / (train[-1].wall_time - train[0].wall_time)
    return {
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "initial_val_loss": None,  # NeMo does not validate before the first step
        "first_val_loss": val[0].value if val else None,
        "first_val_step": val[0].step if val else None,
        "final_val_loss": val[-1].value if val else None,
        "final_val_perplexity": _perplexity(val[-1].value) if val else None,
        "final_train_loss": train[-1].value if train else None,
        "tokens_per_second": throughput,
        "engine": "nemo",
    }


def _perplexity(loss: float) -> float | None:
    return math.exp(loss) if loss < 700 else None  # exp overflows a float beyond ~709


def convert_stage(
    stage: str,
    root: Path,
    *,
    global_batch_size: int,
    seq_length: int,
    tags: LogTags = NEMO_TAGS,
) -> dict:
    """Read the stage's NeMo run directory and write its curves, event copies and metrics."""
    run_dir = root / layout.nemo_run_dir(stage)
    if not event_files(run_dir):
        raise StageError(
            f"no TensorBoard event files under {run_dir}",
            hint="the NeMo training command of this stage must run first (and log to TensorBoard)",
        )
    scalars = read_scalars(run_dir, (tags.train_loss, tags.val_loss, tags.lr))
    if not scalars[tags.train_loss]:
        raise StageError(f"the event files under {run_dir} hold no '{tags.train_loss}' scalars")
    write_text_atomic(
        root / layout.train_curve_path(stage), dvclive_tsv(scalars[tags.train_loss], "loss")
    )
    write_text_atomic(
        root / layout.val_curve_path(stage), dvclive_tsv(scalars[tags.val_loss], "loss")
    )
    if scalars[tags.lr]:
        lr_path = Path(layout.train_curve_path(stage)).with_name("lr.tsv")
        write_text_atomic(root / lr_path, dvclive_tsv(scalars[tags.lr], "lr"))
    _copy_events(run_dir, root / layout.tensorboard_dir(stage) / "nemo")
    metrics = summarize(
        scalars, global_batch_size=global_batch_size, seq_length=seq_length, tags=tags
    )
    # the same split as the torch engine's: numbers to metrics, the rest to the info file
    write_metrics(root, stage, metrics)
    return metrics


def _copy_events(run_dir: Path, target: Path) -> None:
    """NeMo's own event files (its tag names), for ``tensorboard --logdir logs``."""
    with atomic_dir(target) as tmp:
        for path in event_files(run_dir):
            relative = path.relative_to(run_dir)
            (tmp / relative.parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / relative)


# --------------------------------------------------------------------------------------------
# checkpoints: from NeMo's run directories into the layout


_STEP = re.compile(r"step=(\d+)")


def find_nemo2_checkpoint(source: Path) -> Path:
    """``source`` itself when it is a NeMo 2 checkpoint, else the last one saved under it."""
    if _is_nemo2_checkpoint(source):
        return source
    candidates = [p for p in source.rglob("*") if p.is_dir() and _is_nemo2_checkpoint(p)]
    if not candidates:
        raise StageError(
            f"no NeMo 2 checkpoint (a directory with context/ and weights/) under {source}"
        )

    def order(path: Path) -> tuple[int, bool, float]:
        match = _STEP.search(path.name)
        return (
            int(match.group(1)) if match else -1,
            path.name.endswith("-last"),
            path.stat().st_mtime,
        )

    return max(candidates, key=order)


def _is_nemo2_checkpoint(path: Path) -> bool:
    return (path / "context").is_dir() and (path / "weights").is_dir()


def find_hf_checkpoint(source: Path) -> Path:
    """``source`` when it is a Hugging Face model directory (``config.json`` and safetensors)."""
    if (source / "config.json").is_file() and any(source.glob("*.safetensors")):
        return source
    raise StageError(
        f"{source} is not a Hugging Face checkpoint (config.json and *.safetensors)",
        hint="the Model-Optimizer script of this stage must run first and finish",
    )


def find_legacy_checkpoint(source: Path) -> Path:
    """``source`` when it is a ``.nemo`` file, else the newest ``.nemo`` file under it."""
    if source.is_file() and source.suffix == ".nemo":
        return source
    candidates = [p for p in source.rglob("*.nemo") if p.is_file()] if source.is_dir() else []
    if not candidates:
        raise StageError(
            f"no .nemo file at or under {source}",
            hint="the NeMo command of this stage must run first",
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def publish(source: str | Path, target: str | Path, flavor: str) -> Path:
    """Put the finished checkpoint at ``target`` in one rename.

    A checkpoint given directly (a scratch output) is moved; one found inside a training run
    directory is copied, so the run directory stays resumable. Symlinks (NeMo's ``-last``) are
    followed.
    """
    source, target = Path(source), Path(target)
    if not source.exists():
        raise StageError(
            f"{source} does not exist", hint="the NeMo command of this stage must run first"
        )
    if flavor == "legacy":
        found = find_legacy_checkpoint(source)
        with atomic_dir(target) as tmp:
            _transfer(found, tmp / layout.NEMO_LEGACY_FILE, move=found == source)
    elif flavor == "bridge":
        found = find_hf_checkpoint(source)
        with atomic_dir(target) as tmp:
            for child in found.iterdir():
                _transfer(child, tmp / child.name, move=found == source)
    else:
        found = find_nemo2_checkpoint(source)
        with atomic_dir(target) as tmp:
            for child in found.iterdir():
                _transfer(child, tmp / child.name, move=found == source)
    return target


def _transfer(source: Path, target: Path, *, move: bool) -> None:
    if move:
        shutil.move(str(source), str(target))
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copy2(source, target)
