"""Builders for training/evaluation tests: a real (tiny) tokenizer, tokenized WikiText splits,
tiny Llama teachers and students saved as HF directories, and a pipeline directory with
``params.yaml`` — the inputs the finetune, distill and evaluate stages read.

Plain functions (no fixtures) so that test modules and subprocess scripts can share them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SEQ = 32
STUDENT_LAYERS = [3]  # the depth-pruned student keeps the last of 4 layers (0-based)


def read_wikitext(wikitext_dir: Path, split: str, limit: int) -> list[str]:
    texts = []
    with open(wikitext_dir / f"{split}.jsonl", encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line)["text"]
            if text.strip():
                texts.append(text)
            if len(texts) >= limit:
                break
    return texts


# tokenizers' BpeTrainer breaks ties between equally frequent pairs in hash-map order, so two
# trainings on the same text can give other merges and ids (huggingface/tokenizers#1794): a
# fixture trained anew in each process made tests that compare processes (or runs) flaky. The
# 256-token tokenizer is trained once, by the same code, and committed.
BPE_FIXTURE = REPO / "tests" / "fixtures" / "tokenizers" / "wikitext-bpe-256.json"


def train_bpe(wikitext_dir: Path, vocab_size: int = 256):
    """A byte-free BPE ``tokenizers.Tokenizer`` trained on WikiText validation rows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = read_wikitext(wikitext_dir, "validation", 2000)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<eos>"],
        limit_alphabet=100,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def make_tokenizer(wikitext_dir: Path, vocab_size: int = 256, swap: bool = False):
    """A real BPE tokenizer (``tokenizers``) trained on WikiText, as a fast HF tokenizer; the
    256-token one is the committed fixture (the same in every process), others are trained.

    ``swap=True`` exchanges two token ids: the same tokens, a different tokenizer.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if vocab_size == 256:
        state = json.loads(BPE_FIXTURE.read_text(encoding="utf-8"))
    else:
        state = json.loads(train_bpe(wikitext_dir, vocab_size).to_str())
    if swap:
        vocab = state["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[10:12]
        vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer = Tokenizer.from_str(json.dumps(state))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")


def write_tokens(
    root: Path, tokenizer, wikitext_dir: Path, docs: dict[str, tuple[str, int, int]] | None = None
) -> None:
    """Tokenized splits under ``data/tokens`` (EOS after every document), as the tokenize stage writes them."""
    import numpy as np

    from minispec import layout
    from minispec.engines.torch.indexed import IndexedDatasetWriter

    docs = docs or {
        "train": ("test", 0, 1500),
        "validation": ("validation", 1600, 2000),
        "test": ("validation", 2000, 2400),
    }
    for split, (source, start, stop) in docs.items():
        texts = read_wikitext(wikitext_dir, source, stop)[start:stop]
        with IndexedDatasetWriter(root / layout.tokens_prefix(split), np.uint16) as writer:
            for ids in tokenizer(texts)["input_ids"]:
                writer.add_document(ids + [tokenizer.eos_token_id])


def save_hf(model, tokenizer, path: Path) -> None:
    from minispec.engines.torch.modeling import save_model

    save_model(model, tokenizer, path)


def train_config(**overrides):
    """A small distill TrainConfig: 6 steps of 8 windows in micro batches of 4, validation
    every 3 steps, a checkpoint every 2."""
    from minispec.engines.torch.train import TrainConfig

    base = dict(
        stage="distill@small",
        section="distill",
        steps=6,
        global_batch_size=8,
        micro_batch_size=4,
        seq_length=SEQ,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        val_interval=3,
        val_batches=1,
        checkpoint_interval=2,
        seed=7,
    )
    base.update(overrides)
    return TrainConfig(**base)


def tiny_teacher(tokenizer, layers: int = 4, seed: int = 0, **overrides):
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import make_tiny_model, tiny_config

    config = tiny_config(
        vocab_size=len(tokenizer),
        num_hidden_layers=layers,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        **overrides,
    )
    model = make_tiny_model(config, seed=seed)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model


def drop_layers(teacher, keep: list[int]):
    """A depth-pruned copy of ``teacher`` keeping decoder layers ``keep`` (0-based), made by the
    prune stage's own surgery."""
    from minispec.engines.torch.depth import drop_layers as drop

    n_layers = teacher.config.num_hidden_layers
    return drop(teacher, [i for i in range(n_layers) if i not in keep])


def base_spec(**sections) -> dict:
    spec = {
        "version": 1,
        "name": "tiny",
        "seed": 7,
        "teacher": {"source": "unused-teacher"},
        "data": {"source": "unused-data", "seq_length": SEQ},
        "finetune": {
            "steps": 8,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "val_interval": 4,
            "val_batches": 2,
        },
        "prune": {"small": {"kind": "depth", "drop_layers": [1, 2, 3]}},
        "distill": {
            "steps": 8,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "val_interval": 4,
            "val_batches": 2,
        },
        "evaluate": {
            "max_windows": 8,
            "batch_size": 4,
            "max_new_tokens": 4,
            "prompts": ["The history of", "In 1990 the"],
        },
        "resources": {"accelerator": "cpu"},
    }
    for key, value in sections.items():
        if value is None:
            spec.pop(key, None)
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_params(root: Path, spec: dict) -> None:
    (root / "params.yaml").write_text(json.dumps(spec, indent=1), encoding="utf-8")  # JSON is YAML


def make_pipeline(
    root: Path, wikitext_dir: Path, tokenizer, spec: dict | None = None, teacher=None
) -> Path:
    """A pipeline directory as the upstream stages leave it: tokens, teacher, pruned student."""
    from minispec import layout

    root.mkdir(parents=True, exist_ok=True)
    write_tokens(root, tokenizer, wikitext_dir)
    teacher = teacher or tiny_teacher(tokenizer)
    save_hf(teacher, tokenizer, root / layout.TEACHER_DIR)
    save_hf(drop_layers(teacher, STUDENT_LAYERS), tokenizer, root / layout.pruned_dir("small"))
    write_params(root, spec or base_spec())
    return root


def stage_command(name: str, variant: str | None = None) -> list[str]:
    return [sys.executable, "-m", "minispec", "stage", name] + ([variant] if variant else [])


def torchrun_stage_command(name: str, variant: str | None = None, ranks: int = 2) -> list[str]:
    """``minispec stage NAME [VARIANT]`` as ``ranks`` torchrun processes on this machine."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(ranks), *stage_command(name, variant)[1:]]


def run_stage_process(
    root: Path, name: str, variant: str | None = None, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        stage_command(name, variant),
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        **kwargs,
    )


def run_group(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout kill the whole group (torchrun's
    workers included, which killing the launcher alone would leave running)."""
    import signal

    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{command} timed out after {timeout} s:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["OMP_NUM_THREADS"] = "1"
    return env


def read_tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def curve(path: Path, column: str = "loss") -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[column])) for row in read_tsv(path)]


def tensorboard_tags(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
