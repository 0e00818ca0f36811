"""Atomic writes: complete under the final name or absent, with the permissions of a plain open."""

from __future__ import annotations

import os
import stat

import pytest

from minispec.fsio import atomic_file, write_text_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_has_the_mode_of_a_plain_file(tmp_path, umask_022):
    with atomic_file(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"data")  # a writer that opens the existing temporary file
    write_text_atomic(tmp_path / "b.txt", "text")
    (tmp_path / "c.txt").write_text("plain")
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.txt") == mode(tmp_path / "c.txt") == 0o644
    assert (tmp_path / "a.bin").read_bytes() == b"data"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_metrics_split_into_numbers_and_info_and_join_again(tmp_path):
    from minispec import layout
    from minispec.fsio import read_metrics_record, split_metrics, write_metrics

    record = {
        "final_val_loss": 2.5,
        "device": "cpu",
        "global_batch_size": 8,
        "resumed_from_step": None,
        "ok": True,
        "loss": {"kind": "logits_kl", "temperature": 1.0},
        "teacher": {"acc": 0.5, "samples": [{"prompt": "a"}], "nan": float("nan")},
    }
    numbers, info = split_metrics(record, frozenset({"global_batch_size"}))
    assert numbers == {"final_val_loss": 2.5, "loss": {"temperature": 1.0}, "teacher": {"acc": 0.5}}
    assert info["global_batch_size"] == 8 and info["device"] == "cpu" and info["ok"] is True
    write_metrics(tmp_path, "distill@depth", record, frozenset({"global_batch_size"}))
    assert (tmp_path / layout.metrics_path("distill@depth")).is_file()
    assert (tmp_path / "metrics" / "info" / "distill-depth.json").is_file()
    joined = read_metrics_record(tmp_path, "distill@depth")
    assert {k: v for k, v in joined.items() if k != "teacher"} == {
        k: v for k, v in record.items() if k != "teacher"
    }
    assert joined["teacher"]["acc"] == 0.5 and joined["teacher"]["samples"] == [{"prompt": "a"}]
