"""Our DVC hashes agree with DVC's own code (dvc_data) and with a dvc.lock DVC wrote."""

from __future__ import annotations

import io
import os

import pytest
from dvc_data.hashfile.hash import file_md5
from dvc_data.hashfile.meta import Meta
from dvc_data.hashfile.tree import Tree
from dvc_objects.fs import localfs

from minispec.bundle import dvchash

MiB = 1 << 20


def contents() -> dict[str, bytes]:
    """Text with CRLF across DVC's 1 MiB block boundary, binary, mixed and empty files."""
    line = b"hello world\r\n"
    text = line * (2 * MiB // len(line) + 7)
    binary = os.urandom(MiB + 123)
    mixed = b"a\r\nb\r\n" * 100 + b"\x00" + b"c\r\n" * 1000  # binary first block
    late_text = os.urandom(MiB) + b"x\r\n" * 5000  # binary block, then a text block
    return {
        "text.txt": text,
        "bin.dat": binary,
        "mixed.dat": mixed,
        "late.dat": late_text,
        "empty": b"",
    }


@pytest.mark.parametrize("name", ["md5", "md5-dos2unix"])
def test_file_hashes_match_dvc_data(tmp_path, name):
    for fname, data in contents().items():
        path = tmp_path / fname
        path.write_bytes(data)
        digest = dvchash.hash_file(path, legacy=True)
        assert digest.dvc_md5(name) == file_md5(str(path), localfs, name=name), (fname, name)


def test_chunking_does_not_change_hashes():
    data = contents()["text.txt"]
    whole = dvchash.hash_stream(io.BytesIO(data), legacy=True)
    hasher = dvchash.Hasher(legacy=True)
    for start in range(0, len(data), 77_777):  # odd chunks, as tarfile hands them over
        hasher.update(data[start : start + 77_777])
    assert hasher.digest() == whole


def test_dir_hash_matches_dvc_data_tree(tmp_path):
    md5s = {"b/c.txt": "0" * 32, "a.txt": "1" * 32, "b/a b.txt": "2" * 32}
    tree = Tree()
    from dvc_data.hashfile.hash_info import HashInfo

    for rel, md5 in md5s.items():
        tree.add(tuple(rel.split("/")), Meta(), HashInfo("md5", md5))
    tree.digest()
    assert dvchash.dir_md5(md5s) == tree.hash_info.value
    assert dvchash.dir_listing(md5s) == tree.as_bytes()


def test_every_out_of_a_real_run_matches_dvc_lock(run_dir):
    lock = dvchash.read_lock((run_dir / "dvc.lock").read_text())
    assert lock.outs and not lock.needs_legacy
    for entry in lock.outs + lock.source_deps():
        path = run_dir / entry.path
        if entry.is_dir:
            md5s = {rel: dvchash.hash_file(path / rel).md5 for rel in dvchash.walk_dir(path)}
            assert dvchash.dir_md5(md5s) == entry.md5, entry.path
        else:
            assert dvchash.hash_file(path).md5 == entry.md5, entry.path


def test_source_deps_are_inputs_no_stage_produces(run_dir):
    lock = dvchash.read_lock((run_dir / "dvc.lock").read_text())
    assert sorted(d.path for d in lock.source_deps()) == ["corpus", "teacher-source"]
    out = lock.out_for("models/students/depth/model.safetensors")
    assert out.path == "models/students/depth" and out.stage == "distill@depth"
    assert lock.out_for("models/students/depthX") is None


def test_legacy_outs_are_recognised():
    lock = dvchash.read_lock(
        "schema: '2.0'\nstages:\n  a:\n    cmd: x\n    outs:\n    - path: out.txt\n      md5: 0123456789abcdef0123456789abcdef\n"
    )
    (entry,) = lock.outs
    assert entry.hash_name == "md5-dos2unix" and lock.needs_legacy
