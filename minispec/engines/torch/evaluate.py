"""``evaluate`` stage: the teacher, the corrected teacher and every final model, measured by the
same code on the same data and prompts.

For each model (``metrics/evaluate.json``, the format ``layout.py`` documents):

- ``<split>_loss``: mean token cross-entropy over windows of ``data.seq_length`` of the split
  (window ``i`` = tokens ``[i·L, i·L + L]``, every window scores ``L`` tokens, see
  :mod:`windows`); all windows, or with ``evaluate.max_windows`` the first ``max_windows`` of
  the split's seeded permutation — the same windows for every model. ``<split>_perplexity`` is
  its exponential; ``tokens_evaluated`` counts the scored tokens.
- ``params_total`` / ``params_non_embedding`` (:func:`modeling.count_parameters`).
- Generation speed on ``evaluate.prompts``: one prompt at a time (batch 1), greedy,
  exactly ``max_new_tokens`` new tokens (EOS does not stop it, so every model generates the same
  number), with the KV cache, after one warm-up generation. ``tokens_per_second`` = new tokens
  / generation time over all prompts; ``latency_seconds`` = mean time of one prompt's
  generation; ``time_to_first_token_seconds`` = mean time to the first new token. The prompts
  are timed ``evaluate.speed_repeats`` times: ``tokens_per_second`` is the median rate, with
  ``min_``/``max_``/``std_tokens_per_second`` for its spread (named so that bundle
  comparisons treat them as timings). ``samples`` holds the greedy
  continuations (the report shows them).
- ``harness``: with ``evaluate.harness``, lm-evaluation-harness scores ``{task: {metric:
  value}}`` of the loaded model (:mod:`harness`).

Numbers go to ``metrics/evaluate.json`` (an output: the headline of them, ``layout.SUMMARY_METRICS``
is the DVC metric, :mod:`minispec.summary`); paths, samples, settings and lm-eval's
provenance to ``layout.info_path("evaluate")`` (``fsio.write_metrics``).

Models run in the working dtype (``teacher.dtype``: fp32 on CPU, bf16 on GPU) on one device; a
markdown table of the same numbers is written to ``layout.EVALUATE_TABLE``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from minispec import layout
from minispec.engines.torch.losses import logits_objective
from minispec.engines.torch.windows import TokenWindows, permutation
from minispec.errors import StageError

if TYPE_CHECKING:
    from minispec.spec.model import Spec


def models_to_evaluate(spec: Spec) -> list[tuple[str, str | None, str]]:
    """``(group, variant, path)`` of every model: the teacher, the corrected teacher (when
    finetune runs), then each exported model and each student (``layout.final_model_dir``)."""
    models: list[tuple[str, str | None, str]] = [("teacher", None, layout.TEACHER_DIR)]
    if spec.finetune is not None:
        models.append(("teacher_corrected", None, layout.CORRECTED_TEACHER_DIR))
    for variant in dict.fromkeys([*spec.exported, *spec.students]):
        models.append(("students", variant, layout.final_model_dir(spec, variant)))
    return models


def evaluation_windows(window_count: int, max_windows: int | None, seed: int) -> np.ndarray:
    """All windows in order, or the first ``max_windows`` of the seeded permutation, sorted."""
    if max_windows is None or max_windows >= window_count:
        return np.arange(window_count)
    return np.sort(permutation(window_count, seed)[:max_windows])


@torch.no_grad()
def score(
    model,
    windows: TokenWindows,
    indices: np.ndarray,
    batch_size: int,
    vocab_size: int | None = None,
) -> tuple[float, int]:
    """Mean token cross-entropy of ``model`` over the windows ``indices`` and the tokens scored."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(indices), batch_size):
        tokens = windows.batch(indices[start : start + batch_size]).to(device)
        logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
        _, _, ce_sum = logits_objective(
            logits,
            None,
            tokens[:, 1:],
            None,
            kd_weight=0.0,
            ce_weight=1.0,
            normalizer=1.0,
            vocab_size=vocab_size,
        )
        total += ce_sum.double()
        del logits
    count = len(indices) * windows.seq_length
    return (total / max(count, 1)).item(), count


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generation_speed(
    model, tokenizer, prompts: list[str], max_new_tokens: int, repeats: int = 1
) -> dict:
    """Greedy generation of exactly ``max_new_tokens`` per prompt, timed ``repeats`` times over
    all prompts (see the module docstring): the median rate, its min/max and standard deviation."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(prompt: str, new_tokens: int):
        # token_type_ids: transformers 4.x tokenizers may return them; LMs' generate refuses them
        inputs = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False).to(device)
        _synchronize(device)
        start = time.perf_counter()
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
        )
        _synchronize(device)
        return output[0, inputs["input_ids"].shape[1] :], time.perf_counter() - start

    generate(prompts[0], min(8, max_new_tokens))  # warm-up: kernels, allocator, caches
    first_token_times = [generate(prompt, 1)[1] for prompt in prompts]
    samples, rounds, generated = [], [], 0
    for round_index in range(repeats):  # whole rounds over the prompts: a spread of rates
        times, round_tokens = [], 0
        for prompt in prompts:
            new_ids, seconds = generate(prompt, max_new_tokens)
            if round_index == 0:
                samples.append(
                    {
                        "prompt": prompt,
                        "completion": tokenizer.decode(new_ids, skip_special_tokens=True),
                    }
                )
            times.append(seconds)
            round_tokens += int(new_ids.numel())
        rounds.append((round_tokens / sum(times), sum(times) / len(times)))
        generated = round_tokens
    rates = sorted(rate for rate, _ in rounds)
    return {
        "tokens_per_second": float(np.median(rates)),
        "min_tokens_per_second": rates[0],
        "max_tokens_per_second": rates[-1],
        "std_tokens_per_second": float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0,
        "latency_seconds": float(np.median([latency for _, latency in rounds])),
        "time_to_first_token_seconds": sum(first_token_times) / len(first_token_times),
        "generated_tokens": generated,
        "samples": samples,
    }


def evaluate_model(
    root: Path,
    path: str,
    spec: Spec,
    windows: dict[str, TokenWindows],
    indices: dict[str, np.ndarray],
    device: torch.device,
    dtype: torch.dtype,
) -> dict:
    from minispec.engines.torch.modeling import count_parameters, load_model, load_tokenizer

    directory = root / path
    if not (directory / "config.json").exists():
        raise StageError(
            f"{directory}: model not found",
            hint="run the stages that produce it first (minispec run)",
        )
    trust = spec.teacher.trust_remote_code
    model = load_model(directory, dtype=dtype, device=device, trust_remote_code=trust)
    tokenizer = load_tokenizer(directory, trust_remote_code=trust)
    parameters = count_parameters(model)
    metrics: dict = {
        "path": path,
        "params_total": parameters["total"],
        "params_non_embedding": parameters["non_embedding"],
    }
    vocab = min(len(tokenizer), model.config.vocab_size)
    evaluated = {}
    for split, split_windows in windows.items():
        loss, tokens = score(
            model, split_windows, indices[split], spec.evaluate.batch_size, vocab_size=vocab
        )
        metrics[f"{split}_loss"] = loss
        metrics[f"{split}_perplexity"] = math.exp(min(loss, 700.0))
        evaluated[split] = tokens
    metrics["tokens_evaluated"] = evaluated
    metrics.update(
        generation_speed(
            model,
            tokenizer,
            list(spec.evaluate.prompts),
            spec.evaluate.max_new_tokens,
            spec.evaluate.speed_repeats,
        )
    )
    if spec.evaluate.harness is not None:
        from minispec.engines.torch import harness

        results = harness.run_tasks(model, tokenizer, spec.evaluate.harness, root, spec.seed)
        metrics["harness"] = harness.scores(results)
        metrics["harness_provenance"] = harness.provenance(results)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return metrics


def run(spec: Spec, variant: str | None, root: Path) -> None:
    import os

    from minispec.engines.torch.modeling import resolve_device, resolve_dtype
    from minispec.fsio import write_json_atomic, write_metrics, write_text_atomic
    from minispec.summary import write_summary

    if int(os.environ.get("RANK", "0")) != 0:
        return  # evaluation runs on one device; other torchrun ranks have nothing to do
    root = Path(root)
    device = resolve_device(spec.resources.accelerator)
    dtype = resolve_dtype(spec.teacher.dtype, device)
    seq_length = spec.data.seq_length
    windows, indices = {}, {}
    for split in spec.evaluate.splits:
        windows[split] = TokenWindows(root / layout.tokens_prefix(split), seq_length)
        windows[split].require(1, f"evaluate ({split} split)")
        indices[split] = evaluation_windows(
            len(windows[split]), spec.evaluate.max_windows, spec.seed
        )

    results: dict = {}
    for group, name, path in models_to_evaluate(spec):
        label = name or group
        print(f"[evaluate] {label}: {path}", flush=True)
        metrics = evaluate_model(root, path, spec, windows, indices, device, dtype)
        if name is None:
            results[group] = metrics
        else:
            results.setdefault("students", {})[name] = metrics
    results.setdefault("students", {})
    results["settings"] = {
        "speed_repeats": spec.evaluate.speed_repeats,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "seq_length": seq_length,
        "splits": list(spec.evaluate.splits),
        "windows": {split: int(len(indices[split])) for split in indices},
        "batch_size": spec.evaluate.batch_size,
        "prompts": len(spec.evaluate.prompts),
        "max_new_tokens": spec.evaluate.max_new_tokens,
    }
    # numbers to metrics/evaluate.json; paths, samples, settings and lm-eval's provenance
    # (task versions, shots, sample counts) to the info file beside it
    write_metrics(root, "evaluate", results, settings=INFO_KEYS)
    write_summary(root, results)  # the headline, the pipeline's one DVC metric
    if spec.evaluate.harness is not None:
        write_json_atomic(root / layout.HARNESS_SCORES, harness_scores(results))
    write_text_atomic(root / layout.EVALUATE_TABLE, markdown_table(results))


def harness_scores(results: dict) -> dict:
    """The lm-eval scores of every model alone (``layout.HARNESS_SCORES``)."""
    out: dict = {"students": {}}
    for group in ("teacher", "teacher_corrected"):
        if group in results:
            out[group] = results[group].get("harness", {})
    for name, metrics in results.get("students", {}).items():
        out["students"][name] = metrics.get("harness", {})
    return out


# numbers that describe how the evaluation ran rather than a result (they go to the info file)
INFO_KEYS = frozenset({"settings", "harness_provenance", "generated_tokens", "tokens_evaluated"})


def markdown_table(results: dict) -> str:
    """The comparison table of ``metrics/evaluate.json`` (parameters relative to the teacher)."""
    settings = results.get("settings", {})
    splits = settings.get("splits") or [
        k.removesuffix("_loss") for k in results["teacher"] if k.endswith("_loss")
    ]
    rows = [("teacher", results["teacher"])]
    if "teacher_corrected" in results:
        rows.append(("teacher (corrected)", results["teacher_corrected"]))
    rows += [
        (f"student `{name}`", metrics) for name, metrics in results.get("students", {}).items()
    ]
    teacher_params = results["teacher"]["params_total"]

    header = ["model", "params", "non-embedding", "vs teacher"]
    for split in splits:
        header += [f"{split} loss", f"{split} ppl"]
    header += ["tokens/s", "latency (s)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for label, m in rows:
        cells = [
            label,
            _millions(m["params_total"]),
            _millions(m["params_non_embedding"]),
            f"{100 * m['params_total'] / teacher_params:.1f}%",
        ]
        for split in splits:
            cells += [f"{m[f'{split}_loss']:.4f}", f"{m[f'{split}_perplexity']:.2f}"]
        cells += [f"{m['tokens_per_second']:.1f}", f"{m['latency_seconds']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    windows = ", ".join(
        f"{split}: {count} windows" for split, count in settings.get("windows", {}).items()
    )
    note = (
        f"\nLoss: mean token cross-entropy over windows of {settings.get('seq_length')} tokens ({windows}); "
        f"ppl = exp(loss). Generation: greedy, {settings.get('max_new_tokens')} new tokens for each of "
        f"{settings.get('prompts')} prompts, batch 1, KV cache, {settings.get('device')} {settings.get('dtype')}; "
        "latency = mean seconds per prompt.\n"
    )
    return "# Evaluation\n\n" + "\n".join(lines) + "\n" + note + harness_table(rows)


def harness_table(rows: list[tuple[str, dict]]) -> str:
    """lm-eval scores, one column per task metric (``± stderr`` where lm-eval gives one)."""
    columns: list[tuple[str, str]] = []
    for _, m in rows:
        for task, values in (m.get("harness") or {}).items():
            for metric in values:
                if not metric.endswith("_stderr") and (task, metric) not in columns:
                    columns.append((task, metric))
    if not columns:
        return ""
    header = ["model"] + [f"{task} {metric}" for task, metric in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for label, m in rows:
        cells = [label]
        for task, metric in columns:
            values = (m.get("harness") or {}).get(task, {})
            value = values.get(metric)
            stderr = values.get(f"{metric}_stderr")
            cell = "—" if value is None else f"{value:.4f}"
            if value is not None and stderr:
                cell += f" ± {stderr:.4f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "\n## Downstream tasks (lm-evaluation-harness)\n\n"
        + "\n".join(lines)
        + "\n\nScores as lm-eval reports them (± its standard error); task versions, shots and "
        "sample counts are in metrics/info/evaluate.json.\n"
    )


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"
