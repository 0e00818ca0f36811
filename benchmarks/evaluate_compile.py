"""Does torch.compile pay in the evaluate stage? (issue 11, point 3)

The evaluate stage does two things per model: it scores ``max_windows`` windows of each split
(forward only, ``evaluate.score``) and times greedy generation at batch 1
(``evaluate.generation_speed``: a warm-up, one 1-token generation per prompt, then
``max_new_tokens`` per prompt). This script times both on one model, plain eager against
compiled, and reports the compile cost next to the time it saves, so the break-even (how many
windows or generated tokens before compiling pays) is read off one run on one machine:

- scoring: ``evaluate.score`` itself on the eager model and on ``torch.compile(model)``
  (static shapes: every batch is ``batch_size`` windows but the last);
- generation: ``model.generate`` with evaluate's arguments, the default dynamic KV cache (what
  evaluate does) against ``cache_implementation="static"``, with which transformers compiles
  the decoding step itself (``generation_config.compile_config``, CUDA graphs).

    python benchmarks/evaluate_compile.py [--device cuda] [--prompts 3] [--new-tokens 16]

The model is SmolLM2-135M's architecture with random weights in bf16 (the speed of a forward
pass does not depend on the weights' values); tokens are random ids in its vocabulary.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minispec.engines.torch.evaluate import score

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json)
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


class RandomWindows:
    """Random token windows with TokenWindows' ``batch``/``seq_length`` interface."""

    def __init__(self, count: int, seq_length: int, vocab: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.seq_length = seq_length
        self.tokens = torch.from_numpy(rng.integers(0, vocab, (count, seq_length + 1)))

    def batch(self, indices) -> torch.Tensor:
        return self.tokens[torch.as_tensor(np.asarray(indices))]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def scoring(model, device, windows, count: int, batch_size: int, repeats: int) -> dict:
    """First call (compile included) and the steady time of scoring ``count`` windows."""
    indices = np.arange(count)
    first_s, (loss, _) = timed(device, lambda: score(model, windows, indices, batch_size))
    steady = [
        timed(device, lambda: score(model, windows, indices, batch_size))[0] for _ in range(repeats)
    ]
    return {"first_s": first_s, "steady_s": float(np.median(steady)), "loss": loss}


def generation(
    model, device, prompts: list[torch.Tensor], new_tokens: int, static: bool, rounds: int
) -> dict:
    """evaluate.generation_speed's calls: warm-up, 1-token generations, then rounds of prompts."""

    def generate(ids: torch.Tensor, count: int) -> float:
        kwargs = {"cache_implementation": "static"} if static else {}
        seconds, _ = timed(
            device,
            lambda: model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
                **kwargs,
            ),
        )
        return seconds

    warmup_s = generate(prompts[0], min(8, new_tokens))
    first_token_s = [generate(ids, 1) for ids in prompts]
    round_s = [sum(generate(ids, new_tokens) for ids in prompts) for _ in range(rounds)]
    tokens = new_tokens * len(prompts)
    return {
        "warmup_and_first_tokens_s": warmup_s + sum(first_token_s),
        "first_round_s": round_s[0],
        "steady_round_s": float(np.median(round_s[1:])) if rounds > 1 else round_s[0],
        "steady_tokens_per_second": tokens
        / (float(np.median(round_s[1:])) if rounds > 1 else round_s[0]),
        "time_to_first_token_s": float(np.mean(first_token_s)),
    }


def fresh_model(device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--windows", type=int, default=512, help="windows scored per split (evaluate.max_windows)"
    )
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over the prompts")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    windows = RandomWindows(args.windows, args.seq_length, SMOLLM2_135M["vocab_size"])
    # prompts of different lengths, as evaluate's are: each length is a new shape
    prompts = [
        torch.randint(0, SMOLLM2_135M["vocab_size"], (1, 8 + 4 * i), device=device)
        for i in range(args.prompts)
    ]
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
    }

    model = fresh_model(device, dtype)
    results["score_eager"] = scoring(model, device, windows, args.windows, args.batch_size, 3)
    results["score_compiled"] = scoring(
        torch.compile(model, dynamic=False), device, windows, args.windows, args.batch_size, 3
    )
    torch._dynamo.reset()
    model = fresh_model(device, dtype)
    results["generate_eager"] = generation(
        model, device, prompts, args.new_tokens, False, args.rounds
    )
    results["generate_static_compiled"] = generation(
        model, device, prompts, args.new_tokens, True, args.rounds
    )

    eager, compiled = results["score_eager"], results["score_compiled"]
    saved = eager["steady_s"] - compiled["steady_s"]
    cost = compiled["first_s"] - compiled["steady_s"]
    results["score_summary"] = {
        "speedup_steady": eager["steady_s"] / compiled["steady_s"],
        "compile_cost_s": cost,
        "splits_to_break_even": cost / saved if saved > 0 else None,
        "loss_difference": compiled["loss"] - eager["loss"],
    }
    eager, static = results["generate_eager"], results["generate_static_compiled"]
    saved = eager["steady_round_s"] - static["steady_round_s"]
    cost = (static["warmup_and_first_tokens_s"] + static["first_round_s"]) - (
        eager["warmup_and_first_tokens_s"] + eager["first_round_s"]
    )
    results["generate_summary"] = {
        "speedup_steady": eager["steady_round_s"] / static["steady_round_s"],
        "extra_first_call_s": cost,
        "rounds_to_break_even": cost / saved if saved > 0 else None,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
