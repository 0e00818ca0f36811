"""How a NeMo job is launched: ``local`` (torchrun inside the container), ``docker`` or ``slurm``.

A stage of the nemo engine is a list of commands, each an argument list. Spec values (paths,
hub ids, sizes) only ever appear as separate arguments; :func:`minispec.shell.join` quotes every one
of them with :func:`shlex.quote`, so a path with spaces or shell characters reaches the program as one
literal argument and can never run as shell code. The one thing the shell must expand is the
current directory that ``docker run`` and Slurm's container plugin mount: that is a
:class:`ShellWord`, a constant of this module, never built from spec values.

Launchers:

- ``local``: the pipeline runs inside the NeMo container; distributed jobs start with
  ``torchrun --nproc-per-node <devices>``, the tutorial's environment set through ``env``.
- ``docker``: each job runs in ``docker run --rm --gpus all ... IMAGE``, with the pipeline
  directory mounted at ``/workspace`` (the working directory there), environment via ``-e``.
- ``slurm``: each job runs under ``srun`` with one task per GPU on ``resources.nodes`` nodes in
  the container image (pyxis' ``--container-image``); Lightning, which NeMo trains with, reads
  ranks and the rendezvous address from Slurm's environment (``SLURM_PROCID``,
  ``SLURM_NODELIST``...), so multi-node runs need no torchrun and no shell snippet per node.
  Environment goes through ``--export``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minispec.engines.nemo.values import check_values
from minispec.errors import CompileError
from minispec.shell import Arg, Command, ShellWord, join  # noqa: F401  (re-exported for engine code)

WORKSPACE = "/workspace"
PWD_MOUNT = ShellWord(f'"$PWD":{WORKSPACE}')  # the pipeline directory, mounted into the container

# The environment the tutorial sets for NeMo training, pruning and distillation.
TUTORIAL_ENV: dict[str, str] = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # Megatron's TP/SP communication overlap needs it
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # do not cache NCCL communication buffers
    "NCCL_NVLS_ENABLE": "0",  # NVLink SHARP off, saves memory
}


@dataclass(frozen=True)
class Job:
    """One program run inside the NeMo container.

    ``program`` starts with ``python`` (a script path or ``-m module``). ``tasks_per_node`` > 1
    makes it a distributed job: torchrun for local/docker, one Slurm task per GPU for slurm.
    """

    program: list[str]
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    nodes: int = 1
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.program or self.program[0] != "python":
            raise ValueError(f"a NeMo job runs a Python program, got {self.program[:1]}")


def launch(spec, job: Job) -> Command:
    """The command that runs ``job`` with the spec's ``nemo.launcher``."""
    check_values(spec)  # no option smuggled in as an image, no line break (values.py)
    settings = spec.nemo_settings
    if settings.launcher == "slurm":
        return _slurm(settings, job)
    if job.nodes > 1:
        raise CompileError(
            f"launcher '{settings.launcher}' runs on one machine but the job needs {job.nodes} nodes",
            hint="set nemo.launcher: slurm for resources.nodes > 1",
        )
    inner = _torchrun(job) if job.tasks_per_node > 1 else list(job.program)
    if settings.launcher == "docker":
        return _docker(settings, job, inner)
    env = [f"{key}={value}" for key, value in job.env.items()]
    return ["env", *env, *inner] if env else inner


def _torchrun(job: Job) -> list[str]:
    """``python script.py args`` → ``torchrun --nproc-per-node N script.py args`` (one node)."""
    script_and_args = job.program[1:]
    if script_and_args[:1] == ["-m"]:
        return [
            "torchrun",
            "--nproc-per-node",
            str(job.tasks_per_node),
            "--module",
            *script_and_args[1:],
        ]
    return ["torchrun", "--nproc-per-node", str(job.tasks_per_node), *script_and_args]


def _docker(settings, job: Job, inner: list[str]) -> Command:
    command: Command = ["docker", "run", "--rm"]
    if job.gpus_per_node:
        command += ["--gpus", "all"]
    command += [
        "--shm-size", settings.shm_size,
        # NVIDIA's recommended limits for the NeMo container (pinned memory, deep stacks)
        "--ulimit", "memlock=-1",
        "--ulimit", "stack=67108864",
        "-v", PWD_MOUNT,
        "-w", WORKSPACE,
    ]  # fmt: skip
    for key, value in job.env.items():
        command += ["-e", f"{key}={value}"]
    return [*command, settings.image, *inner]


def _slurm(settings, job: Job) -> Command:
    slurm = settings.slurm
    command: Command = [
        "srun",
        "--nodes",
        str(job.nodes),
        "--ntasks-per-node",
        str(job.tasks_per_node),
    ]
    if job.gpus_per_node:
        command += ["--gpus-per-node", str(job.gpus_per_node)]
    for flag, value in (
        ("--partition", slurm.partition),
        ("--account", slurm.account),
        ("--time", slurm.time),
    ):
        if value:
            command += [flag, value]
    exports = ",".join(["ALL", *(f"{key}={value}" for key, value in job.env.items())])
    command += [
        "--export", exports,
        "--container-image", settings.image,
        "--container-mounts", PWD_MOUNT,
        "--container-workdir", WORKSPACE,
    ]  # fmt: skip
    return [*command, *job.program]
