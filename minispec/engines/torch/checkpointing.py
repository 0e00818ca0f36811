"""Resumable training state on disk: safetensors for tensors, JSON for the rest — never pickles.

A checkpoint is a directory ``<checkpoint_dir>/step-00000010/``::

    model.safetensors       trained module, full (unsharded) fp32 state, tied weights once
    optimizer.safetensors   AdamW state tensors, keys ``<param name>/<exp_avg|exp_avg_sq|step>``
    rng-rank<R>.safetensors torch CPU (and CUDA) generator states of rank R
    state.json              format, fingerprint, step, optimizer hyper-parameters, scheduler
                            position, numpy/python RNG states, logged curves so far, file sizes

It is written under ``.step-00000010.partial``; every file is fsynced, ``state.json`` is written
last with the size of every other file, and the directory is renamed into place. A crash, a
kill -9 or a full disk leaves at most a ``.partial`` directory, which is never loaded and is
removed by the next save. After a successful save older checkpoints are deleted (the newest
complete one is always kept). Loading reads safetensors and JSON only, so a checkpoint cannot
execute code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
PREFIX = "step-"


def step_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def partial_dir(root: Path, step: int) -> Path:
    return root / f".{step_name(step)}.partial"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


# --------------------------------------------------------------------------------------------
# writing


def begin(root: Path, step: int) -> Path:
    """Create the temporary directory of a new checkpoint (rank 0), removing stale partials."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{PREFIX}*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    path = partial_dir(root, step)
    path.mkdir()
    return path


SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file, written tensor by tensor and fsynced.

    ``safetensors.torch.save_file`` first serialises every tensor into one in-memory buffer,
    i.e. a second copy of the whole state (the optimizer state of an 8B model is 64 GB); this
    writes the same format — an 8-byte little-endian header length, a JSON header of
    ``dtype``/``shape``/``data_offsets``, then the raw bytes — streaming each tensor's storage.
    """
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header: dict[str, dict] = {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no safetensors code")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
        handle.flush()
        os.fsync(handle.fileno())


def commit(partial: Path, root: Path, step: int, state: dict) -> Path:
    """Write ``state.json`` (with file sizes), rename the checkpoint into place, drop older ones."""
    files = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.name != STATE_FILE}
    payload = {"format": FORMAT, "step": step, "complete": True, **state, "files": files}
    state_path = partial / STATE_FILE
    with open(state_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, allow_nan=False)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(partial)
    final = root / step_name(step)
    if final.exists():  # a rerun that reached the same step again: replace it
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_dir(root)
    for old in complete_dirs(root):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def abort(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)


def clear(root: Path) -> None:
    """Remove every checkpoint (used when the configuration changed and they cannot be resumed)."""
    if root.exists():
        for child in root.iterdir():
            if child.name.startswith(PREFIX) or child.name.startswith(f".{PREFIX}"):
                shutil.rmtree(child, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class Checkpoint:
    path: Path
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / name))


def complete_dirs(root: Path) -> list[Path]:
    """Checkpoint directories by name (``.partial`` ones excluded), newest first."""
    if not root.exists():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True
    )


def read_valid(path: Path) -> tuple[Checkpoint | None, str]:
    """The checkpoint at ``path`` if it is complete and intact, else None and the reason."""
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable {STATE_FILE} ({exc})"
    if state.get("format") != FORMAT or not state.get("complete"):
        return None, f"format {state.get('format')} is not {FORMAT}, or incomplete"
    for name, size in state.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            return None, f"{name} is missing or truncated"
    return Checkpoint(path, state), ""


def latest(root: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest intact checkpoint, and notes about damaged ones that were skipped."""
    notes = []
    for path in complete_dirs(root):
        checkpoint, reason = read_valid(path)
        if checkpoint is not None:
            return checkpoint, notes
        notes.append(f"{path}: {reason}")
    return None, notes


# --------------------------------------------------------------------------------------------
# optimizer and RNG state <-> (tensors, JSON)


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A name-keyed optimizer state dict (``get_state_dict``'s) → safetensors tensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for name, entry in state_dict.get("state", {}).items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [
        {key: (list(value) if isinstance(value, tuple) else value) for key, value in group.items()}
        for group in state_dict.get("param_groups", [])
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for flat, value in tensors.items():
        name, key = flat.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    for name, entries in meta.get("scalars", {}).items():
        state.setdefault(name, {}).update(entries)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def capture_rng(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    python_state = random.getstate()
    meta = {
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    numpy_state = meta["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
