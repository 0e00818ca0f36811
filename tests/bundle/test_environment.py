"""What a bundle records about the machine, and how differences are reported."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess

import pytest

from minispec.bundle.environment import capture, differences, git_state


def test_capture_records_versions(tmp_path):
    env = capture(tmp_path, {"engine": "torch"})
    assert env["packages"]["click"] == importlib.metadata.version("click")
    assert env["packages"]["ruamel-yaml"] == importlib.metadata.version(
        "ruamel.yaml"
    )  # normalized names
    assert env["torch"]["cuda_available"] in (True, False)
    assert env["git"] is None  # tmp_path is not in a git work tree
    assert capture(tmp_path, {"engine": "torch"}) == env  # no timestamps: stable


def test_nemo_runs_record_the_image(tmp_path):
    env = capture(tmp_path, {"engine": "nemo", "nemo": {"image": "nvcr.io/nvidia/nemo:25.04"}})
    assert env["nemo"]["image"] == "nvcr.io/nvidia/nemo:25.04"
    if shutil.which("docker") is None:
        assert env["nemo"]["digest"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    git("add", "dvc.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init")
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "dvc.yaml").write_text("stages: {a: {cmd: x}}\n")
    assert git_state(tmp_path)["dirty"] is True


def test_differences_name_what_changed():
    old = {
        "python": {"version": "3.11.7"},
        "torch": {"version": "2.13.0", "cuda": None},
        "packages": {"numpy": "2.1.0", "gone": "1.0"},
        "gpus": [],
    }
    new = {
        "python": {"version": "3.12.1"},
        "torch": {"version": "2.13.0", "cuda": "12.8"},
        "packages": {"numpy": "2.2.0", "new": "0.1"},
        "gpus": [{"name": "NVIDIA H100"}],
    }
    assert differences(old, new) == [
        "python version: 3.11.7 → 3.12.1",
        "gpus: none → NVIDIA H100",
        "torch cuda: None → 12.8",
        "package gone: 1.0 → not installed",
        "package new: not installed → 0.1",
        "package numpy: 2.1.0 → 2.2.0",
    ]
    assert differences(old, old) == []
