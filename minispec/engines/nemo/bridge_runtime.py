"""What flavor ``bridge`` runs around Model-Optimizer's scripts (inside the container).

- :data:`BRIDGE_TAGS`: the TensorBoard tags ``distill.py`` writes (Megatron-Bridge's
  ``training_log`` and ``evaluate_and_print_results``, into ``<output_dir>/tb_logs``):

      total loss               the training objective of each step (KD loss; ModelOpt's
                               ``LogitsAndIntermediatesLossBalancer`` output)
      lm loss validation       the student's cross-entropy on the held-out 1 % (the validation
                               loss is the plain LM loss, as ours is)
      learning-rate            the learning rate

  ``minispec nemo logs --flavor bridge`` turns them into the curves and metrics both engines
  write.
- where ``prune_minitron.py --output_hf_path`` / ``distill.py --hf_export_path`` left the
  Hugging Face directory, for ``minispec nemo publish``: :func:`minispec.engines.nemo.logs.find_hf_checkpoint`.
- :func:`write_prune_metrics`: ``metrics/prune@<v>.json`` for a student ``prune_minitron.py``
  made, with the same keys as the torch engine's (sizes, validation loss right after pruning),
  measured by the torch engine's code.
"""

from __future__ import annotations

import time
from pathlib import Path

from minispec import layout
from minispec.engines.nemo.logs import LogTags
from minispec.errors import StageError
from minispec.fsio import write_json_atomic

BRIDGE_TAGS = LogTags(train_loss="total loss", val_loss="lm loss validation", lr="learning-rate")


def write_prune_metrics(spec, variant: str, root: Path) -> dict:
    """Sizes of the teacher and of the pruned student, and both validation losses on the first
    validation windows (``torch.prune.finish``'s keys), for a ``prune_minitron.py`` student."""
    from minispec.engines.torch import modeling
    from minispec.engines.torch.calibration import validation_windows, windows_loss
    from minispec.engines.torch.prune import load_teacher, sizes

    settings = spec.prune[variant]
    pruned_dir = root / layout.pruned_dir(variant)
    if not (pruned_dir / "config.json").is_file():
        raise StageError(f"{pruned_dir}: no pruned model there", hint="run prune_minitron.py first")
    started = time.perf_counter()
    teacher, _tokenizer, device = load_teacher(spec, root)
    pruned = modeling.load_model(
        pruned_dir,
        dtype=next(teacher.parameters()).dtype,
        device=device,
        trust_remote_code=spec.teacher.trust_remote_code,
    )
    metrics: dict = {
        "kind": settings.kind,
        "importance": "modelopt_minitron",
        "engine": "nemo",
        "flavor": "bridge",
        "source": sizes(teacher),
        "pruned": sizes(pruned),
    }
    metrics["params_kept_fraction"] = (
        metrics["pruned"]["params_total"] / metrics["source"]["params_total"]
    )
    validation = validation_windows(root, spec.data.seq_length)
    if validation is not None:
        windows, indices = validation
        metrics["val_windows"] = len(indices)
        metrics["val_tokens"] = len(indices) * windows.seq_length
        metrics["teacher_val_loss"] = windows_loss(teacher, windows, indices, device)
        metrics["val_loss"] = windows_loss(pruned, windows, indices, device)
    metrics["measure_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(root / layout.metrics_path(f"prune@{variant}"), metrics)
    return metrics
