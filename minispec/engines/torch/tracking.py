"""Where training curves go: DVCLive, TensorBoard and a progress bar (rank 0 only).

Records are plain dicts, kept by the trainer as the run's history (and in every checkpoint):

- train: ``{"step", "loss", "ce_loss", "lr", ["kd_loss"], ["intermediate_loss"],
  ["tokens_per_second"], "time"}`` — one per optimizer step (``step`` = updates done);
- val: ``{"step", "loss", "time"}`` — at step 0, every ``val_interval`` steps and at the end.

:class:`StageTracker` writes them to ``layout.log_dir(stage)`` through DVCLive (so
``plots/metrics/train/loss.tsv`` and ``plots/metrics/val/loss.tsv`` have ``timestamp step loss``
columns, as ``layout.py`` documents) and as TensorBoard events under ``tb/`` (tags
``train/objective`` (the minimized loss), ``train/ce_loss``, ``train/kd_loss``, ``val/loss``, ...). On resume the logs are rebuilt from the checkpoint's history,
so they hold exactly the steps of the resumed run, with no duplicates from the killed one.

DVCLive runs inside a DVC stage: it must neither create experiments (``save_dvc_exp=False``;
inside ``dvc repro``/``dvc exp run`` DVCLive sees ``DVC_ROOT`` and would turn it off itself)
nor write a ``dvc.yaml`` (``dvcyaml=False``): the compiled pipeline declares these plots.
Outside a DVC stage (``DVC_ROOT`` unset: a stage run by hand, tests, benchmarks) DVCLive would
look for a DVC repository and, failing that, run ``dvc init`` in the enclosing Git repository;
:func:`_open_live` skips DVCLive's repository handling there, so only the files are written.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

TRAIN_KEYS = ("loss", "kd_loss", "ce_loss", "intermediate_loss", "lr", "tokens_per_second")
# TensorBoard tags mean one thing in every stage: DVCLive's `train/loss` (layout's curve file) is
# the loss being minimized, CE in finetune and KD in distill, so TensorBoard calls it
# `train/objective`; `train/ce_loss` is always cross-entropy, `train/kd_loss` always the KD term.
TENSORBOARD_TAGS = {"train/loss": "train/objective"}


def _open_live(log_dir: Path):
    """A DVCLive logger that writes ``log_dir`` and never creates DVC repositories or experiments."""
    import os

    from dvclive import Live

    class StageLive(Live):
        def _init_dvc(self):
            if os.environ.get("DVC_ROOT"):  # inside `dvc repro` / `dvc exp run`: the normal path
                super()._init_dvc()

    # resume=False: the directory is rebuilt from the run's history on every (re)start
    return StageLive(
        dir=str(log_dir),
        resume=False,
        save_dvc_exp=False,
        dvcyaml=False,
        report=None,
        monitor_system=False,
    )


class Recorder:
    """Keeps nothing and writes nothing: the interface, used where no logs are wanted."""

    def replay(self, history: dict) -> None:
        pass

    def log_train(self, record: dict) -> None:
        pass

    def log_val(self, record: dict) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class StageTracker(Recorder):
    """DVCLive + TensorBoard + tqdm for a training stage; degrades to a warning if one is missing."""

    def __init__(
        self,
        log_dir: Path,
        tensorboard_dir: Path,
        *,
        total_steps: int,
        initial_step: int,
        description: str,
    ):
        self.log_dir = Path(log_dir)
        self.tensorboard_dir = Path(tensorboard_dir)
        self.live = self._open_dvclive()
        self.writer = self._open_tensorboard()
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc=description,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def _open_dvclive(self):
        try:
            return _open_live(self.log_dir)
        except ImportError:
            warnings.warn(
                "dvclive is not installed: no DVC plots are written (pip install dvclive)",
                stacklevel=3,
            )
            return None

    def _open_tensorboard(self):
        shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "tensorboard is not installed: no TensorBoard events are written (pip install tensorboard)",
                stacklevel=3,
            )
            return None
        return SummaryWriter(log_dir=str(self.tensorboard_dir))

    def replay(self, history: dict) -> None:
        """Rewrite the logs of the steps a checkpoint already holds (resume)."""
        records = [("train", r) for r in history.get("train", [])] + [
            ("val", r) for r in history.get("val", [])
        ]
        records.sort(key=lambda item: (item[1]["step"], item[0] == "train"))  # val at a step first
        for kind, record in records:
            (self.log_train if kind == "train" else self.log_val)(record)
        if history.get("train"):
            self.bar.update(history["train"][-1]["step"] - self.bar.n)
        self.flush()

    def log_train(self, record: dict) -> None:
        step = record["step"]
        for key in TRAIN_KEYS:
            if key in record:
                self._scalar(f"train/{key}", record[key], step, record.get("time"))

    def log_val(self, record: dict) -> None:
        self._scalar("val/loss", record["loss"], record["step"], record.get("time"))

    def _scalar(self, name: str, value: float, step: int, walltime: float | None) -> None:
        if self.live is not None:
            self.live.step = step
            self.live.log_metric(name, value, timestamp=True)
        if self.writer is not None:
            tag = TENSORBOARD_TAGS.get(name, name)
            self.writer.add_scalar(tag, value, step, walltime=walltime)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def status(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def flush(self) -> None:
        if self.live is not None:
            self.live.make_summary()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
        if self.live is not None:
            self.live.end()
        self.bar.close()
