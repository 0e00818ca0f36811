"""Cost of the activation-importance pass vs a plain forward over the same calibration data.

    PYTHONPATH=. python benchmarks/importance_speed.py [--workdir DIR] [--samples 64] [--repeats 3]

SmolLM2-135M on WikiText-103 (test split, 256-token windows, the quickstart's 64 calibration
sequences), batches as the stage makes them. Three timings over the identical batches,
interleaved batch by batch and repeated, best of ``--repeats`` reported:

- ``forward``: ``model(input_ids)`` — the plain causal-LM forward (logits included);
- ``base forward``: ``model.model(input_ids)`` — the decoder without the LM head, which is what
  the importance pass runs (it needs no logits);
- ``importance``: the stage's pass (``ActivationRecorder``: base forward + hooks + reductions,
  and the final scores).

Target (issue 5): importance <= 1.3x forward. The ratio to the base forward isolates the
hooks' own overhead; on a shared machine that ratio is noisy, so the script also reports the
share of the importance pass spent inside the hooks (timed around each reduction).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import smollm2_setup
import torch

from minispec import layout
from minispec.engines.torch.calibration import calibration_set, iter_batches
from minispec.engines.torch.importance import ActivationRecorder
from minispec.engines.torch.modeling import load_model
from minispec.engines.torch.surgery import model_dims


class TimedRecorder(ActivationRecorder):
    """The stage's recorder, also summing the wall time spent inside its hooks."""

    hook_seconds = 0.0

    def _accumulate(self, key, activation):
        start = time.perf_counter()
        super()._accumulate(key, activation)
        self.hook_seconds += time.perf_counter() - start


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/minispec-bench"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    root = smollm2_setup.prepare(args.workdir)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(root / layout.TEACHER_DIR, dtype=dtype, device=device)
    windows, indices = calibration_set(root, args.seq_length, args.samples, 1234, "--samples")
    batches = list(iter_batches(windows, indices, device))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward(batch):
        with torch.no_grad():
            model(input_ids=batch[:, :-1], use_cache=False)
        sync()

    def base_forward(batch):
        with torch.no_grad():
            model.model(input_ids=batch[:, :-1], use_cache=False)
        sync()

    def importance(recorder, batch):
        recorder.run([batch])
        sync()

    # The machine is shared: passes are interleaved batch by batch, so load changes hit all three
    # alike; each repeat sums its batches, and the best repeat of each pass is reported.
    runs = {"forward": [], "base forward": [], "importance": []}
    hook_share = []  # fraction of the importance pass spent inside the hooks, per repeat
    base_forward(batches[0])  # warm-up
    for _ in range(args.repeats):
        totals = dict.fromkeys(runs, 0.0)
        recorder = TimedRecorder(model)  # exactly collect_importance, one batch at a time
        for batch in batches:
            totals["forward"] += timed(forward, batch)
            totals["base forward"] += timed(base_forward, batch)
            totals["importance"] += timed(importance, recorder, batch)
        totals["importance"] += timed(recorder.scores, model_dims(model.config))
        recorder.remove()
        for name, total in totals.items():
            runs[name].append(total)
        hook_share.append(recorder.hook_seconds / totals["importance"])
    best = {name: min(times) for name, times in runs.items()}
    tokens = args.samples * args.seq_length
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, {dtype}"
    )
    print(
        f"calibration: {args.samples} x {args.seq_length} tokens, batches of {batches[0].shape[0]}"
    )
    print("| pass | best s | all runs (s) | tokens/s |")
    print("| --- | ---: | --- | ---: |")
    for name, times in runs.items():
        print(
            f"| {name} | {best[name]:.2f} | {', '.join(f'{t:.2f}' for t in times)} | {tokens / best[name]:.0f} |"
        )
    print(f"importance / forward = {best['importance'] / best['forward']:.3f}  (target <= 1.3)")
    print(
        f"importance / base forward = {best['importance'] / best['base forward']:.3f}  (hook overhead)"
    )
    print(
        "time inside the hooks: "
        + ", ".join(f"{share:.1%}" for share in hook_share)
        + " of the importance pass (per repeat; load-independent view of the hook overhead)"
    )


if __name__ == "__main__":
    main()
