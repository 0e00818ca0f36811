"""`minispec run` and `status` against careless use: a second run, DVC busy, SIGINT, odd --out, closed pipes."""

from __future__ import annotations

import time

from pipeline_harness import QUICKSTART, compile_into, minispec

from minispec.runlock import run_lock


def snapshot(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_second_run_refuses_while_the_first_holds_the_directory(tmp_path):
    out = tmp_path / "run"
    compile_into(QUICKSTART, out)  # the first run's pipeline: lr as compiled
    before = snapshot(out)
    with run_lock(out):  # what the first `minispec run` holds from before it compiles
        began = time.monotonic()
        second = minispec(
            "run", str(QUICKSTART), "--out", str(out), "--set", "finetune.lr=3e-3", cwd=tmp_path
        )
        elapsed = time.monotonic() - began
    assert second.returncode != 0
    assert "another `minispec run` is running in" in second.stderr
    assert "nothing was changed" in second.stderr and "Traceback" not in second.stderr
    assert snapshot(out) == before  # params.yaml still holds the first run's lr
    assert elapsed < 60  # refused at once, not after waiting for anything


def test_the_lock_is_released_and_writes_nothing(tmp_path):
    with run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released on exit: the next run takes it
        pass
    assert list(tmp_path.iterdir()) == []
    fresh = tmp_path / "new"
    try:
        with run_lock(fresh):
            raise RuntimeError("the run failed before writing anything")
    except RuntimeError:
        pass
    assert not fresh.exists()  # a directory created for the lock alone is removed again


def test_a_dry_run_needs_no_lock(tmp_path):
    with run_lock(tmp_path):
        result = minispec("run", str(QUICKSTART), "--out", str(tmp_path), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_dvc_busy_is_not_blamed_on_an_old_stage_log(tmp_path):
    """Another DVC process holds the pipeline (DVC's rwlock): the error says so, and does not
    point at a log left by an earlier run, which says nothing about this failure."""
    import json
    import os

    from pipeline_harness import dvc

    out = tmp_path / "run"
    compile_into(QUICKSTART, out)
    dvc("init", "--no-scm", "-q", cwd=out)
    (out / "logs").mkdir()
    (out / "logs" / "data.log").write_text("an old run's output\n")
    holder = {"pid": os.getpid(), "cmd": "dvc repro (another process)"}
    (out / ".dvc" / "tmp").mkdir(exist_ok=True)
    (out / ".dvc" / "tmp" / "rwlock").write_text(json.dumps({"write": {str(out): holder}}))
    result = minispec("run", str(QUICKSTART), "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0
    assert "DVC could not start stage 'data'" in result.stderr, result.stderr
    assert "is busy" in result.stderr and "another DVC process" in result.stderr
    assert "data.log" not in result.stderr
    assert (out / "logs" / "data.log").read_text() == "an old run's output\n"


def test_sigint_to_minispec_alone_stops_dvc_at_once(tmp_path, wikitext_dir):
    """`kill -INT <minispec>` (not the terminal's Ctrl-C to the whole group) stops DVC and the
    stage right away instead of waiting for the stage to finish. The stage input here is a FIFO
    nobody writes, so DVC would wait on it forever."""
    import errno
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from pipeline_harness import env

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("validation", "test"):
        shutil.copy(wikitext_dir / f"{split}.jsonl", corpus / f"{split}.jsonl")
    os.mkfifo(corpus / "train.jsonl")
    command = [
        sys.executable,
        "-m",
        "minispec",
        "run",
        str(QUICKSTART),
        "--out",
        str(tmp_path / "run"),
    ]
    command += ["--set", f"data.source={corpus}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "initialized a DVC repository" in line:
                break
        time.sleep(8)  # DVC starts and blocks reading the FIFO
        assert process.poll() is None, "".join(lines)
        process.send_signal(signal.SIGINT)  # minispec alone, not its process group
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, "".join(lines) + output
    assert "error: interrupted" in output
    try:  # no reader is left on the FIFO: DVC is gone
        os.close(os.open(corpus / "train.jsonl", os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError("a process still reads the stage input")
    except OSError as exc:
        assert exc.errno == errno.ENXIO


def test_an_out_dir_with_braces_is_refused_before_dvc_runs(tmp_path):
    """DVC formats paths into its progress messages: '{x}' fails every stage after it ran."""
    out = tmp_path / "run{x}"
    result = minispec("run", str(QUICKSTART), "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0
    assert "DVC cannot run a pipeline in a directory whose path holds '{' or '}'" in result.stderr
    assert not out.exists()


def test_status_into_a_closed_pipe_stops_quietly(tmp_path):
    """`minispec status | head -1`: once the reader is gone, no BrokenPipeError, no traceback."""
    import os
    import subprocess
    import sys

    from pipeline_harness import env

    read, write = os.pipe()
    os.close(read)  # the reader (head) has exited
    try:
        result = subprocess.run(
            [sys.executable, "-m", "minispec", "status", str(QUICKSTART), "--out", str(tmp_path)],
            cwd=tmp_path, env=env(), stdout=write, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        os.close(write)
    assert "BrokenPipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == ""
    assert result.returncode == 141
