"""Warm stage start: `minispec stage` as a fork of a process that imported torch once.

Real processes throughout: the server is the module's own `python -m`, the callers are the real
`minispec stage` CLI as DVC starts it, and the stage runs on a tiny real pipeline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import train_support as ts

from minispec import layout
from minispec.engines.torch.warm import stage_server
from minispec.fsio import read_metrics_record

REPO = Path(__file__).resolve().parents[3]


def stage_command(*args: str, env: dict, cwd: Path, **kwargs) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "minispec", "stage", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def server_pid(env: dict) -> int:
    return int((Path(env["MINISPEC_STAGE_SERVER"]).parent / "server.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.fixture
def pipeline(tmp_path, wikitext_dir):
    tokenizer = ts.make_tokenizer(wikitext_dir)
    spec = ts.base_spec(finetune={"steps": 4, "val_interval": 2})
    return ts.make_pipeline(tmp_path / "pipeline", wikitext_dir, tokenizer, spec)


def test_a_stage_runs_in_the_server_with_the_callers_streams_and_status(pipeline, tmp_path):
    with stage_server() as env:
        # an error: the caller gets the child's exit status and its message on its own stderr
        failed = stage_command("prune", env=env, cwd=pipeline)
        _, err = failed.communicate(timeout=600)
        cold = stage_command("prune", env={"MINISPEC_STAGE_SERVER": ""}, cwd=pipeline)
        _, cold_err = cold.communicate(timeout=600)
        assert failed.returncode == cold.returncode == 1
        assert err == cold_err == "error: stage 'prune' needs a variant name\n"
        pid = server_pid(env)
        assert alive(pid)

        # a real stage, forked: its outputs, and its start-up counted from the caller's start
        done = stage_command("finetune", env=env, cwd=pipeline)
        out, err = done.communicate(timeout=600)
        assert done.returncode == 0, err
        assert "[finetune] first step done" in out
        assert "stage imports 0.0" in err  # torch and the stage modules came with the fork
        assert read_metrics_record(pipeline, "finetune")["steps"] == 4
        assert (pipeline / layout.CORRECTED_TEACHER_DIR / "model.safetensors").exists()
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)  # stopped with the run that started it


def test_ctrl_c_reaches_the_forked_stage(pipeline):
    ts.write_params(pipeline, ts.base_spec(finetune={"steps": 100000, "val_interval": 50000}))
    with stage_server() as env:
        caller = stage_command("finetune", env=env, cwd=pipeline)
        deadline = time.monotonic() + 600
        for line in caller.stdout:  # wait until it trains
            if "first step done" in line or time.monotonic() > deadline:
                break
        caller.send_signal(signal.SIGINT)
        _, err = caller.communicate(timeout=120)
    assert caller.returncode == 130 and "interrupted" in err


def test_without_a_server_the_stage_runs_in_its_own_process(pipeline):
    done = stage_command("finetune", env={"MINISPEC_STAGE_SERVER": ""}, cwd=pipeline)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    assert "stage imports 0.0" not in err and "[finetune] first step done" in out


def test_without_a_temporary_directory_stages_start_cold(tmp_path, monkeypatch):
    """No writable place for the socket is no error: `minispec run` runs every stage cold."""
    import tempfile

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    with stage_server() as env:
        assert env == {}


def test_the_server_refuses_to_serve_once_cuda_is_initialised(monkeypatch):
    """A library that initialises CUDA at import (torchao 0.18, imported by transformers, on a
    GPU machine) would leave every forked stage unable to use the GPU: the server must not
    start then, so the stages run cold. This machine has no GPU to initialise, so CUDA's state
    is what is set here."""
    import torch

    from minispec.engines.torch import warm

    warm.preload()  # the real imports, which leave CUDA alone here
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA was initialised"):
        warm.preload()
