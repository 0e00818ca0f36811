"""lm-evaluation-harness tasks on a model the evaluate stage has already loaded.

``evaluate.harness`` names lm-eval tasks; :func:`run_tasks` wraps the loaded model and
tokenizer in lm-eval's ``HFLM`` (no second load, nothing downloaded for the model) and calls
``lm_eval.simple_evaluate``. Tasks come from lm-eval's own registry (their data from the
Hugging Face Hub) or from the YAML files in ``include_path``; a task whose ``dataset_path`` is
``json`` with local ``dataset_kwargs.data_files`` needs no network at all. Relative
``data_files`` are read relative to ``include_path`` (the stage runs there while tasks load).

Results are split as the metrics files are (see ``layout.py``):

- ``scores(results)``: ``{task: {metric: number}}`` — lm-eval's ``"acc,none"`` becomes ``acc``,
  ``"acc_stderr,none"`` ``acc_stderr``; a filter other than ``none`` is kept as a suffix
  (``exact_match_strict-match``). Only numbers: these go to ``metrics/evaluate.json``.
- ``provenance(results)``: lm-eval's version, each task's version, few-shot count and sample
  count — what the numbers mean, written next to the metrics but not as a metric.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minispec.errors import StageError
from minispec.spec.lm_eval_tasks import local_task_names

if TYPE_CHECKING:
    from minispec.spec.model import HarnessSpec


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise StageError(
            "evaluate.harness needs lm-evaluation-harness, which is not installed",
            hint="pip install 'minispec[eval]' (or pip install lm-eval) into this environment",
        ) from None
    return lm_eval


def task_manager(harness: HarnessSpec, root: Path):
    """lm-eval's TaskManager: only the local YAMLs when they define every task (fast, offline),
    else lm-eval's built-in registry as well."""
    from lm_eval.tasks import TaskManager

    if harness.include_path is None:
        return TaskManager()
    include = (root / harness.include_path).resolve()
    if not include.is_dir():
        raise StageError(
            f"evaluate.harness.include_path {harness.include_path}: no such directory",
            hint="point include_path at a directory of lm-eval task YAML files",
        )
    only_local = set(harness.tasks) <= local_task_names(include)
    return TaskManager(include_path=str(include), include_defaults=not only_local)


@contextlib.contextmanager
def working_directory(path: Path | None):
    """Run inside ``path`` (task YAMLs' relative ``data_files``), then return."""
    if path is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_tasks(model, tokenizer, harness: HarnessSpec, root: Path, seed: int) -> dict[str, Any]:
    """``simple_evaluate`` of ``harness.tasks`` on the loaded ``model``; lm-eval's results dict."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    device = next(model.parameters()).device
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=harness.batch_size, device=str(device)
    )
    manager = task_manager(harness, root)
    include = (root / harness.include_path).resolve() if harness.include_path else None
    with working_directory(include):
        try:
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(harness.tasks),
                task_manager=manager,
                num_fewshot=harness.num_fewshot,
                limit=harness.limit,
                log_samples=False,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        except (KeyError, ValueError) as exc:
            raise StageError(
                f"lm-eval could not run tasks {list(harness.tasks)}: {exc}",
                hint="check the task names (`lm_eval ls tasks`) and include_path's YAML files",
            ) from None
    return results


def metric_name(key: str) -> str:
    """``"acc,none"`` → ``acc``; ``"exact_match,strict-match"`` → ``exact_match_strict-match``."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric}_{filter_name}"


def scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every numeric metric of every task (and group), by task; NaN/inf and strings dropped."""
    out: dict[str, dict[str, float]] = {}
    for task, values in sorted(results.get("results", {}).items()):
        numbers = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key == "sample_len" or not math.isfinite(value):
                continue  # counts go to provenance; N/A stderr comes as a string or NaN
            numbers[metric_name(key)] = float(value)
        if numbers:
            out[task] = numbers
    return out


def provenance(results: dict[str, Any]) -> dict[str, Any]:
    """What the scores mean: versions, shots and sample counts per task."""
    samples = results.get("n-samples", {})
    return {
        "lm_eval_version": results.get("lm_eval_version"),
        "tasks": {
            task: {
                "version": results.get("versions", {}).get(task),
                "num_fewshot": results.get("n-shot", {}).get(task),
                "samples": samples.get(task, {}).get("effective"),
                "higher_is_better": results.get("higher_is_better", {}).get(task),
            }
            for task in sorted(results.get("results", {}))
        },
    }
