"""Launchers (local, docker, slurm) and quoting: a hostile path stays one literal argument."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from minispec.engines.nemo.commands import commands_for
from minispec.engines.nemo.launch import TUTORIAL_ENV, Job, ShellWord, join, launch
from minispec.errors import CompileError

HOSTILE = "$(touch pwned); rm -rf x `touch pwned2` 'q\" a b"
JOB = Job(["python", "/opt/NeMo/scripts/llm/gpt_train.py", "--log_dir", HOSTILE], tasks_per_node=8,
          gpus_per_node=8, env=dict(TUTORIAL_ENV))  # fmt: skip


def test_local_runs_torchrun_with_the_tutorial_environment(load_tutorial):
    command = launch(load_tutorial().spec, JOB)
    assert command[:4] == [
        "env",
        "CUDA_DEVICE_MAX_CONNECTIONS=1",
        "TORCH_NCCL_AVOID_RECORD_STREAMS=1",
        "NCCL_NVLS_ENABLE=0",
    ]
    assert command[4:7] == ["torchrun", "--nproc-per-node", "8"]
    assert command[7:] == JOB.program[1:]
    single = launch(load_tutorial().spec, Job(["python", "-m", "x", "--a", "1"]))
    assert single == ["python", "-m", "x", "--a", "1"]  # one process: no torchrun, no env


def test_docker_wraps_the_job(load_tutorial):
    spec = load_tutorial("nemo.launcher=docker", "nemo.shm_size=32g").spec
    command = launch(spec, JOB)
    text = join(command)
    assert text.startswith("docker run --rm --gpus all --shm-size 32g ")
    assert ' -v "$PWD":/workspace -w /workspace ' in text
    for key, value in TUTORIAL_ENV.items():
        assert f"-e {key}={value}" in text
    image = command.index("nvcr.io/nvidia/nemo:25.04")
    assert command[image + 1 : image + 4] == ["torchrun", "--nproc-per-node", "8"]
    no_gpu = launch(spec, Job(["python", "-m", "minispec.engines.nemo.import_ckpt"]))
    assert "--gpus" not in no_gpu


def test_slurm_one_task_per_gpu_on_every_node(load_tutorial):
    spec = load_tutorial("nemo.launcher=slurm", "resources.nodes=4", "nemo.slurm.partition=batch",
                         "nemo.slurm.account=llm", "nemo.slurm.time=04:00:00").spec  # fmt: skip
    job = Job(JOB.program, tasks_per_node=8, gpus_per_node=8, nodes=4, env=dict(TUTORIAL_ENV))
    command = launch(spec, job)
    words = [str(w) for w in command]
    assert words[:7] == ["srun", "--nodes", "4", "--ntasks-per-node", "8", "--gpus-per-node", "8"]
    assert (
        words[words.index("--partition") + 1] == "batch"
        and words[words.index("--account") + 1] == "llm"
    )
    assert words[words.index("--time") + 1] == "04:00:00"
    assert (
        words[words.index("--export") + 1]
        == "ALL,CUDA_DEVICE_MAX_CONNECTIONS=1,TORCH_NCCL_AVOID_RECORD_STREAMS=1,NCCL_NVLS_ENABLE=0"
    )
    assert words[words.index("--container-image") + 1] == "nvcr.io/nvidia/nemo:25.04"
    assert "torchrun" not in words  # Lightning takes ranks from Slurm's environment
    assert words[-len(JOB.program) :] == JOB.program


def test_multi_node_needs_slurm(load_tutorial):
    with pytest.raises(CompileError, match="runs on one machine"):
        launch(load_tutorial().spec, Job(["python", "x.py"], tasks_per_node=8, nodes=2))
    spec = load_tutorial("nemo.launcher=slurm", "resources.nodes=2").spec
    train = commands_for(spec, "finetune")[0]
    words = [str(w) for w in train]
    assert words[:5] == ["srun", "--nodes", "2", "--ntasks-per-node", "8"]
    assert words[words.index("--num_nodes") + 1] == "2"


def run_echo(line: str, cwd: Path) -> str:
    """Run a joined command with `echo` in front of it: prints the words, executes nothing."""
    result = subprocess.run(
        ["sh", "-c", "printf '%s\\n' " + line], cwd=cwd, capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.mark.parametrize("launcher", ["local", "docker", "slurm"])
@pytest.mark.parametrize("flavor", ["nemo2", "legacy"])
def test_hostile_paths_never_run_as_shell_code(load_tutorial, tmp_path, launcher, flavor):
    teacher = tmp_path / HOSTILE
    teacher.mkdir()
    spec = load_tutorial(f"teacher.source={teacher}", f"data.tokenizer={teacher}", f"nemo.root=/opt/Ne Mo;{HOSTILE}",
                         f"nemo.launcher={launcher}", f"nemo.flavor={flavor}", "export.students=[]").spec  # fmt: skip
    commands = [
        c
        for step in ("tokenize", "import", "prune")
        for c in commands_for(spec, step, "width" if step == "prune" else None)
    ]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for command in commands:
        line = join(command)
        words = [str(w) for w in command]
        if not any(isinstance(w, ShellWord) for w in command):
            assert shlex.split(line) == words  # the quoted line is exactly the argument list
        printed = run_echo(line, run_dir).splitlines()
        expected = [w if not isinstance(w, ShellWord) else f"{run_dir}:/workspace" for w in command]
        assert printed == expected
        if printed[0] != "minispec":
            assert any(HOSTILE in word for word in printed)
    assert not any(run_dir.iterdir()), "a quoted argument was executed by the shell"
    assert not (tmp_path / "pwned").exists()
