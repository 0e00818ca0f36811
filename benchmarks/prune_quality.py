"""Quality right after pruning (no distillation) on SmolLM2-135M and WikiText-103.

    PYTHONPATH=. python benchmarks/prune_quality.py [--workdir DIR] [--val-windows 128]

Runs the real ``importance`` and ``prune@<variant>`` stages on a pipeline-like directory
(``benchmarks/smollm2_setup.py``: the GGUF teacher as an HF dir, WikiText test tokens as the
calibration ("train") split, validation tokens as validation) with the quickstart's settings
(seq_length 256, seed 1234), then scores the teacher and every pruned model on the first
``--val-windows`` validation windows of 256 tokens (mean next-token cross-entropy, nats).

- width, at the quickstart's target made valid (see WIDTH_378 below; 64 calibration sequences):
  activation vs magnitude vs random importance;
- depth 30 -> 20 (32 calibration sequences): the contiguous block chosen by ``lm_loss`` vs the
  per-layer ``block_influence`` pick, plus two fixed blocks for reference (layers 20-29 and
  11-20, 1-indexed, which the shared README measured at 22.9 and 6.4).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import smollm2_setup
import torch

from minispec import layout
from minispec.engines.torch.calibration import windows_loss
from minispec.engines.torch.modeling import count_parameters, load_model
from minispec.engines.torch.windows import TokenWindows
from minispec.stage import run_stage

SEQ_LENGTH = 256
# The quickstart's width target is hidden 576 -> 384, ffn 1536 -> 1024 with 9 heads kept, but
# transformers 5's LlamaConfig refuses hidden_size % num_attention_heads != 0 (384 / 9), so the
# stage refuses it too. Two valid neighbours are measured: hidden 378 (= 42 x 9, heads kept) and
# hidden 384 with 6 heads (2 of 3 per KV group).
WIDTH_378 = {
    "kind": "width",
    "target_hidden_size": 378,
    "target_ffn_hidden_size": 1024,
    "calibration_samples": 64,
}
WIDTH_384 = {**WIDTH_378, "target_hidden_size": 384, "target_num_attention_heads": 6}
VARIANTS = {
    **{
        f"width378-{m}": {**WIDTH_378, "importance": m}
        for m in ("activation", "magnitude", "random")
    },
    **{
        f"width384h6-{m}": {**WIDTH_384, "importance": m}
        for m in ("activation", "magnitude", "random")
    },
    "depth-lm-loss": {
        "kind": "depth",
        "target_num_layers": 20,
        "importance": "lm_loss",
        "calibration_samples": 32,
    },
    "depth-block-influence": {
        "kind": "depth",
        "target_num_layers": 20,
        "importance": "block_influence",
        "calibration_samples": 32,
    },
    "depth-drop-20-29": {"kind": "depth", "drop_layers": list(range(20, 30))},
    "depth-drop-11-20": {"kind": "depth", "drop_layers": list(range(11, 21))},
}


def write_params(root: Path) -> None:
    spec = {
        "version": 1,
        "name": "smollm2-prune-quality",
        "engine": "torch",
        "seed": 1234,
        "teacher": {"source": "teacher"},
        "data": {"source": "wikitext", "seq_length": SEQ_LENGTH},
        "prune": VARIANTS,
        "resources": {"accelerator": "cpu"},
    }
    (root / layout.PARAMS_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


def describe(name: str, root: Path) -> str:
    metrics = json.loads((root / layout.metrics_path(f"prune@{name}")).read_text())
    pruned = metrics["pruned"]
    if metrics["kind"] == "depth":
        return f"{pruned['num_layers']} layers, dropped {compact(metrics['drop_layers'])}"
    return f"hidden {pruned['hidden_size']}, ffn {pruned['ffn_hidden_size']}, {pruned['num_attention_heads']} heads"


def compact(layers: list[int]) -> str:
    """[11, 12, 13, 20] -> '11-13, 20'."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        start = layer if start is None else start
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{start}-{layer}" if layer != start else f"{layer}")
            start = None
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/minispec-bench"))
    parser.add_argument("--val-windows", type=int, default=128)
    args = parser.parse_args()

    root = smollm2_setup.prepare(args.workdir)
    write_params(root)
    seconds = {}
    started = time.perf_counter()
    run_stage("importance", None, root)
    seconds["importance"] = time.perf_counter() - started
    for name in VARIANTS:
        started = time.perf_counter()
        run_stage("prune", name, root)
        seconds[name] = time.perf_counter() - started
        print(f"{name}: {seconds[name]:.1f} s", flush=True)

    validation = TokenWindows(root / layout.tokens_prefix("validation"), SEQ_LENGTH)
    indices = list(range(min(args.val_windows, len(validation))))
    device = torch.device("cpu")
    rows = []
    models = {
        "teacher": root / layout.TEACHER_DIR,
        **{name: root / layout.pruned_dir(name) for name in VARIANTS},
    }
    for name, path in models.items():
        model = load_model(path, dtype=torch.float32, device=device)
        loss = windows_loss(model, validation, indices, device)
        params = count_parameters(model)["total"]
        what = (
            "30 layers, hidden 576, ffn 1536, 9 heads"
            if name == "teacher"
            else describe(name, root)
        )
        rows.append((name, what, params, loss))
        print(f"{name}: loss {loss:.4f}", flush=True)

    print()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"validation: first {len(indices)} windows of {SEQ_LENGTH} tokens ({len(indices) * SEQ_LENGTH} tokens)"
    )
    print()
    print("| model | shape | params | val loss | val ppl | prune stage s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, what, params, loss in rows:
        stage_s = f"{seconds[name]:.1f}" if name in seconds else "-"
        print(
            f"| {name} | {what} | {params / 1e6:.1f}M | {loss:.3f} | {math.exp(loss):.1f} | {stage_s} |"
        )
    print(f"\nimportance stage: {seconds['importance']:.1f} s")
    depth_scores = json.loads((root / layout.depth_scores_path("depth-lm-loss")).read_text())
    print("\nlm_loss block scores (calibration loss without layers first..last):")
    print(
        ", ".join(
            f"{b['first_layer']}-{b['last_layer']}: {b['loss']:.2f}" for b in depth_scores["blocks"]
        )
    )
    print("block influence per layer:")
    print(
        ", ".join(
            f"{entry['layer']}: {entry['block_influence']:.3f}" for entry in depth_scores["layers"]
        )
    )


if __name__ == "__main__":
    main()
