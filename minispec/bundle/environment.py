"""The machine and software a run used, recorded in a bundle and compared on reproduction.

Everything is read locally: interpreter, OS, CPU, GPUs (``nvidia-smi`` when present, and what
torch sees), every installed distribution's version (``importlib.metadata``), torch/CUDA/cuDNN,
git commit and dirty flag of the pipeline directory and of minispec's own checkout, and the
NeMo container image (with its digest when docker knows it) for nemo-engine runs. Nothing here
records a timestamp, so capturing twice on the same machine gives the same document.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TIMEOUT = 20  # seconds for each external probe (git, nvidia-smi, docker)


def capture(root: Path, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    from minispec import __version__

    spec = spec or {}
    env: dict[str, Any] = {
        "minispec": {"version": __version__, "source": git_state(Path(__file__).resolve().parent)},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "libc": " ".join(platform.libc_ver()).strip() or None,
        },
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count()},
        "gpus": nvidia_gpus(),
        "torch": torch_info(),
        "packages": installed_packages(),
        "git": git_state(root),
        "engine": spec.get("engine", "torch"),
    }
    if env["engine"] == "nemo":
        image = (spec.get("nemo") or {}).get("image") or "nvcr.io/nvidia/nemo:25.04"
        env["nemo"] = {"image": image, "digest": docker_digest(image)}
    return env


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    """stdout of a probe, or None when the tool is missing or fails (a probe never fails a bundle)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def nvidia_gpus() -> list[dict[str, str]]:
    out = _run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    )
    gpus = []
    for line in (out or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            gpus.append({"name": fields[0], "memory": fields[1], "driver": fields[2]})
    return gpus


def torch_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
    }


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(_normalize(name), dist.version)
    return dict(sorted(packages.items()))


def git_state(path: Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the git work tree holding ``path`` (None outside git)."""
    top = _run(["git", "-C", str(path), "rev-parse", "--show-toplevel"])
    if not top:
        return None
    commit = _run(["git", "-C", str(path), "rev-parse", "HEAD"])
    status = _run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit.strip() if commit else None, "dirty": bool(status and status.strip())}


def docker_digest(image: str) -> str | None:
    out = _run(["docker", "image", "inspect", "--format", '{{join .RepoDigests ","}}', image])
    return out.strip() or None if out else None


# ---- comparison -----------------------------------------------------------------------------


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable lines, one per difference that can change numbers or speed."""
    lines = []
    for section, keys in (
        ("python", ("version", "implementation")),
        ("os", ("system", "release", "machine", "libc")),
        ("cpu", ("model", "logical_cores")),
    ):
        for key in keys:
            old = (recorded.get(section) or {}).get(key)
            new = (current.get(section) or {}).get(key)
            if old != new:
                lines.append(f"{section} {key}: {old} → {new}")
    if recorded.get("gpus") != current.get("gpus"):
        lines.append(f"gpus: {_gpus(recorded.get('gpus'))} → {_gpus(current.get('gpus'))}")
    old_torch, new_torch = recorded.get("torch") or {}, current.get("torch") or {}
    for key in ("version", "cuda", "cudnn", "cuda_available"):
        if old_torch.get(key) != new_torch.get(key):
            lines.append(f"torch {key}: {old_torch.get(key)} → {new_torch.get(key)}")
    old_ms = (recorded.get("minispec") or {}).get("version")
    new_ms = (current.get("minispec") or {}).get("version")
    if old_ms != new_ms:
        lines.append(f"minispec: {old_ms} → {new_ms}")
    old_src = ((recorded.get("minispec") or {}).get("source") or {}).get("commit")
    new_src = ((current.get("minispec") or {}).get("source") or {}).get("commit")
    if old_src and new_src and old_src != new_src:
        lines.append(f"minispec source commit: {old_src[:12]} → {new_src[:12]}")
    if recorded.get("nemo") != current.get("nemo") and (
        recorded.get("nemo") or current.get("nemo")
    ):
        lines.append(f"nemo: {recorded.get('nemo')} → {current.get('nemo')}")
    old_pkgs, new_pkgs = recorded.get("packages") or {}, current.get("packages") or {}
    for name in sorted(set(old_pkgs) | set(new_pkgs)):
        old, new = old_pkgs.get(name), new_pkgs.get(name)
        if old != new:
            lines.append(f"package {name}: {old or 'not installed'} → {new or 'not installed'}")
    return lines


def _gpus(gpus: list[dict[str, str]] | None) -> str:
    return ", ".join(g.get("name", "?") for g in gpus) if gpus else "none"
