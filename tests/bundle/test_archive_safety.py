"""Malicious archives are refused before anything is written, and nothing lands outside."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.bundle import UnsafeArchiveError, safe_extract, verify_bundle
from minispec.bundle.archive import ArchiveWriter, iter_members
from minispec.cli import cli


def archive(path: Path, *members: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tuple):
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(member)
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


GOOD = ("pipeline/metrics/evaluate.json", b"{}")
CASES = {
    "absolute path": ((GOOD, ("/tmp/minispec-evil.txt", b"x")), "absolute path"),
    "parent traversal": ((GOOD, ("pipeline/../../evil.txt", b"x")), "'..' in path"),
    "leading parent": ((("../evil.txt", b"x"),), "'..' in path"),
    "symlink to /etc": (
        (special("pipeline/link", tarfile.SYMTYPE, "/etc/passwd"),),
        "points outside the bundle",
    ),
    "symlink up": (
        (special("pipeline/link", tarfile.SYMTYPE, "../../outside"),),
        "points outside the bundle",
    ),
    "symlink then write through it": (
        (special("pipeline/dir", tarfile.SYMTYPE, "/tmp"), ("pipeline/dir/evil.txt", b"x")),
        "points outside the bundle",
    ),
    "symlink inside": (
        (GOOD, special("pipeline/link", tarfile.SYMTYPE, "metrics/evaluate.json")),
        "bundles hold no links",
    ),
    "hardlink to /etc": (
        (special("pipeline/hard", tarfile.LNKTYPE, "/etc/passwd"),),
        "points outside the bundle",
    ),
    "hardlink up": (
        (special("pipeline/hard", tarfile.LNKTYPE, "../outside"),),
        "points outside the bundle",
    ),
    "character device": ((special("pipeline/null", tarfile.CHRTYPE),), "device file or FIFO"),
    "block device": ((special("pipeline/sda", tarfile.BLKTYPE),), "device file or FIFO"),
    "fifo": ((special("pipeline/pipe", tarfile.FIFOTYPE),), "device file or FIFO"),
    "duplicate": ((GOOD, ("pipeline/./metrics/evaluate.json", b'{"x": 1}')), "duplicate member"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malicious_archives_are_refused(case, tmp_path):
    members, reason = CASES[case]
    bad = archive(tmp_path / "bad.tar.gz", *members)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract(bad, dest)
    assert reason in caught.value.message
    assert "archive member" in caught.value.message  # the member is named
    assert not dest.exists() or not any(dest.rglob("*"))  # refused before writing anything
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/minispec-evil.txt").exists()
    with pytest.raises(UnsafeArchiveError):
        verify_bundle(bad)


def test_cli_names_the_unsafe_member(tmp_path):
    bad = archive(tmp_path / "bad.tar.gz", GOOD, ("../../evil.txt", b"x"))
    result = CliRunner().invoke(cli, ["bundle", "verify", str(bad)])
    assert result.exit_code == 1
    assert "archive member '../../evil.txt'" in result.output and "Traceback" not in result.output


def test_plain_archive_extracts_inside_target(tmp_path):
    source = tmp_path / "ok.tar.gz"
    writer = ArchiveWriter(source)
    writer.add_bytes("pipeline/metrics/evaluate.json", b'{"loss": 1}')
    writer.add_bytes("manifest.json", b"{}")
    writer.close()
    names = safe_extract(source, tmp_path / "out")
    assert names == ["pipeline/metrics/evaluate.json", "manifest.json"]
    extracted = tmp_path / "out" / "pipeline" / "metrics" / "evaluate.json"
    assert extracted.read_bytes() == b'{"loss": 1}'
    assert oct(os.stat(extracted).st_mode & 0o7777) == oct(0o644)


def test_members_are_checked_while_streaming(tmp_path):
    """A bad member late in the archive stops the pass when reached; earlier ones were fine."""
    bad = archive(tmp_path / "bad.tar.gz", GOOD, ("b.txt", b"x"), special("c", tarfile.FIFOTYPE))
    seen = []
    with pytest.raises(UnsafeArchiveError, match="'c': device file or FIFO"):
        for name, _, _ in iter_members(bad):
            seen.append(name)
    assert seen == ["pipeline/metrics/evaluate.json", "b.txt"]
