"""Warm stage start: torch, transformers and the stage modules imported once per ``minispec run``.

DVC runs every stage as its own process (``minispec stage NAME``), and on a GPU machine each one
spent 7–9 s importing torch and transformers before doing anything (measured on one H200,
``benchmarks/RESULTS.md``), 13 times in the quickstart. Within ``minispec run`` the first torch
stage starts a *stage server* that imports those libraries once and then waits on a Unix socket;
each ``minispec stage`` that DVC starts asks it to fork a child that runs the stage with the
caller's arguments, working directory, environment and standard streams (passed as file
descriptors), and exits with the child's status. Signals the caller gets (Ctrl-C, DVC's
SIGTERM) are relayed to the child, and a child whose caller is gone stops.

The server never touches CUDA or runs a tensor operation: a forked child initialises CUDA (and
its CPU thread pools) itself, exactly as a fresh process does. It stops when ``minispec run``
ends (``stage_server``), or by itself when that process is gone.

Without a server (``dvc repro`` by hand, torchrun ranks, ``minispec run --no-warm-start``, a
server that failed to start) a stage runs in its own process as before; the result is the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SERVER_ENV = "MINISPEC_STAGE_SERVER"  # the socket's path, set by `minispec run` for dvc repro
OWNER_ENV = "MINISPEC_STAGE_SERVER_OWNER"  # pid of the `minispec run` the server serves
# stages that import neither torch nor transformers: a fork would gain them nothing
COLD_STEPS = frozenset({"data", "report"})
READY_TIMEOUT_S = 300.0  # importing torch on a cold network filesystem can take minutes
_STATUS = struct.Struct("!i")


# --------------------------------------------------------------------------------------------
# minispec run's side


@contextlib.contextmanager
def stage_server(enabled: bool = True) -> Iterator[dict[str, str]]:
    """Environment entries that let the stages of one ``dvc repro`` share a warm server; the
    server (started by the first stage that needs it) is stopped when the block ends."""
    directory = None
    if enabled:
        try:
            directory = Path(tempfile.mkdtemp(prefix="minispec-stages-"))
        except OSError:  # no writable temporary directory: every stage starts cold, as before
            pass
    if directory is None:
        yield {}
        return
    try:
        yield {SERVER_ENV: str(directory / "stage.sock"), OWNER_ENV: str(os.getpid())}
    finally:
        _stop_server(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _stop_server(directory: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((directory / "server.pid").read_text())
        os.kill(pid, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# the stage's side (`minispec stage`, started by DVC)


def run_in_server(name: str, argv: list[str]) -> int | None:
    """Run ``minispec ARGV`` in a child of the warm server and return its exit status; None
    when there is no server to use (the caller then runs the stage itself)."""
    path = os.environ.get(SERVER_ENV)
    if not path or name in COLD_STEPS or "LOCAL_RANK" in os.environ:  # torchrun ranks: own process
        return None
    connection = _connect(Path(path))
    if connection is None:
        return None
    with connection:
        _send_request(connection, argv)
        return _wait_for_status(connection)


def _connect(path: Path) -> socket.socket | None:
    """A connection to the server, started by this call if no stage started it yet; None when
    it cannot serve (failed to import, gone, or ``minispec run`` ended)."""
    directory = path.parent
    if not directory.is_dir():
        return None
    if not path.exists():
        _start_server(path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not _server_gone(path):
        if path.exists():
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(str(path))
                return connection
            except OSError:
                connection.close()
                return None
        time.sleep(0.05)
    return None


def _server_gone(path: Path) -> bool:
    if path.with_suffix(".failed").exists() or not path.parent.is_dir():
        return True
    try:
        pid = int((path.parent / "server.pid").read_text())
    except (OSError, ValueError):
        return False  # being started by another stage
    return not _alive(pid)


def _start_server(path: Path) -> None:
    """Start the server unless another stage already did (the pid file is the claim)."""
    try:
        claim = os.open(path.parent / "server.pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # claimed by another stage, or the directory is gone
        return
    owner = os.environ.get(OWNER_ENV, str(os.getppid()))
    with open(path.parent / "server.log", "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "minispec", "stage-server", str(path), owner],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # DVC's signals to the stage are relayed, not broadcast
        )
    os.write(claim, str(server.pid).encode())
    os.close(claim)


def _send_request(connection: socket.socket, argv: list[str]) -> None:
    from minispec.timing import process_start_boottime

    request = json.dumps(
        {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "started": process_start_boottime(),
        }
    ).encode()
    # the length and the three standard streams in one message, then the request itself
    socket.send_fds(connection, [struct.pack("!Q", len(request))], [0, 1, 2])
    connection.sendall(request)


def _wait_for_status(connection: socket.socket) -> int:
    def relay(signum, _frame):
        with contextlib.suppress(OSError):
            connection.sendall(bytes([signum]))

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, relay)
    data = _receive_exactly(connection, _STATUS.size)
    if data is None:
        print(
            "error: the stage process ended without an exit status (killed, or out of memory?)",
            file=sys.stderr,
        )
        return 1
    return _STATUS.unpack(data)[0]


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        try:
            chunk = connection.recv(size - len(chunks))
        except InterruptedError:
            continue
        if not chunk:
            return None
        chunks += chunk
    return chunks


# --------------------------------------------------------------------------------------------
# the server


def preload() -> None:
    """Import what the torch stages import, without running a tensor operation or touching CUDA."""
    import importlib

    import torch
    import transformers

    from minispec.steps import STEPS

    # transformers imports lazily: the classes the stages use, and the Llama-family models
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "PreTrainedTokenizerFast"):
        getattr(transformers, name)
    for family in ("llama", "mistral", "qwen2"):
        importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    for step in STEPS:
        importlib.import_module(step.run.split(":")[0])
    for optional in ("dvclive", "gguf", "safetensors.torch"):
        with contextlib.suppress(ImportError):
            importlib.import_module(optional)
    # torchao (the fp8 extra) reads the GPU's compute capability when transformers imports it
    # (torchao 0.18: prototype MX kernels, via transformers' torchao quantizer). That initialises
    # CUDA here, and a forked child can then not use the GPU ("Cannot re-initialize CUDA in
    # forked subprocess", seen on an H200): refuse to serve, so that every stage starts cold.
    if torch.cuda.is_initialized():
        raise RuntimeError(
            "CUDA was initialised while importing the stage modules; a forked stage could not "
            "use the GPU, so every stage starts cold"
        )


def serve(path: Path, owner: int, run_cli: Callable[[list[str]], int]) -> None:
    """Import, listen on ``path``, and fork a child per request that runs ``run_cli(argv)``
    (the ``minispec`` command line, passed in by ``minispec stage-server``), until ``owner``
    (the ``minispec run`` process) is gone."""
    try:
        preload()
    except Exception as exc:  # the stages run in their own processes and report it themselves
        path.with_suffix(".failed").write_text(f"{type(exc).__name__}: {exc}\n")
        raise
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    binding = path.with_suffix(".binding")
    listener.bind(str(binding))
    listener.listen(8)
    os.rename(binding, path)  # clients see the socket only once it accepts connections
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    sys.stdout.flush()
    sys.stderr.flush()
    while _alive(owner):
        listener.settimeout(1.0)
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.settimeout(None)
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the stage may wait for its own children
            os._exit(_serve_one(connection, run_cli))
        connection.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _serve_one(connection: socket.socket, run_cli: Callable[[list[str]], int]) -> int:
    """In the forked child: become the caller's stage process, run it, report its status."""
    header, fds, _, _ = socket.recv_fds(connection, 8, 3)
    request = json.loads(_receive_exactly(connection, struct.unpack("!Q", header)[0]) or b"{}")
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    # new text streams on the caller's descriptors, line-buffered like a stage under DVC
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.argv = ["minispec", *request["argv"]]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(SERVER_ENV, None)  # this child runs the stage itself
    from minispec import timing

    timing.set_process_start(request.get("started"))
    done = threading.Event()
    threading.Thread(target=_relay_signals, args=(connection, done), daemon=True).start()
    code = _exit_status(run_cli, request["argv"])
    done.set()
    with contextlib.suppress(OSError):
        connection.sendall(_STATUS.pack(code))
    return code


def _exit_status(run_cli: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        code = run_cli(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the command line handles the rest; this is a last resort
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


def _relay_signals(connection: socket.socket, done: threading.Event) -> None:
    """Signals the caller got arrive as bytes; a caller gone away is a SIGTERM."""
    while True:
        try:
            data = connection.recv(1)
        except OSError:
            data = b""
        if done.is_set():
            return
        os.kill(os.getpid(), data[0] if data else signal.SIGTERM)
        if not data:
            return
