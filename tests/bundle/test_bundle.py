"""Bundle create → verify on a real `dvc repro` run, and every way verification must fail."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.bundle import BundleError, BundleVerifyError, create_bundle, dvchash, verify_bundle
from minispec.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    return {
        "plain": create_bundle(run_dir, out / "run.tar.gz").path,
        "full": create_bundle(run_dir, out / "run-full.tar.gz", with_artifacts=True).path,
    }


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def repack(source: Path, target: Path, edits: dict[str, bytes], *, fix_manifest: bool) -> Path:
    """Copy a bundle with some members replaced (``b""`` deletes), optionally re-hashing the manifest."""
    content = members(source)
    for name, data in edits.items():
        if data == b"":
            content.pop(name, None)
        else:
            content[name] = data
    if fix_manifest:
        manifest = json.loads(content["manifest.json"])
        for name in edits:
            if name in content:
                manifest["files"][name] = {
                    "sha256": hashlib.sha256(content[name]).hexdigest(),
                    "size": len(content[name]),
                }
            else:
                manifest["files"].pop(name, None)
        content["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(target, "w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def flip(data: bytes, offset: int | None = None) -> bytes:
    offset = len(data) // 2 if offset is None else offset
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


# ---- what a bundle holds --------------------------------------------------------------------


def test_bundle_holds_the_run(bundles, run_dir):
    content = members(bundles["plain"])
    manifest = json.loads(content["manifest.json"])
    names = set(content)
    for required in (
        "environment.json",
        "spec/tiny.yaml",
        "spec/resolved.json",
        "pipeline/dvc.yaml",
        "pipeline/params.yaml",
        "pipeline/dvc.lock",
        "pipeline/metrics/evaluate.json",
        "pipeline/logs/finetune/plots/metrics/val/loss.tsv",
        "pipeline/reports/report.html",
        "pipeline/reports/plots/val_loss_all.png",
        # source deps: what reproduction needs to run
        "pipeline/corpus/train.jsonl",
        "pipeline/teacher-source/model.safetensors",
    ):
        assert required in names, required
    assert not any(n.startswith("pipeline/models/") for n in names)  # artifacts only on request
    assert not any("/.dvc/" in n or n.startswith("pipeline/.dvc/") for n in names)
    # every member but the manifest is listed with its sha256
    assert set(manifest["files"]) == names - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry == {
            "sha256": hashlib.sha256(content[name]).hexdigest(),
            "size": len(content[name]),
        }
    assert content["pipeline/dvc.lock"] == (run_dir / "dvc.lock").read_bytes()
    assert manifest["name"] == "tiny-e2e" and manifest["with_artifacts"] is False
    resolved = json.loads(content["spec/resolved.json"])
    assert resolved["distill"]["loss"]["kind"] == "logits_kl"  # a default, filled in


def test_environment_is_recorded(bundles):
    env = json.loads(members(bundles["plain"])["environment.json"])
    assert env["python"]["version"].count(".") == 2
    assert env["packages"]["dvc"] and env["packages"]["torch"] and env["packages"]["matplotlib"]
    assert env["torch"]["version"].startswith(env["packages"]["torch"].split("+")[0])
    assert env["os"]["system"] and env["cpu"]["logical_cores"] >= 1
    assert env["engine"] == "torch" and "nemo" not in env


def test_artifacts_and_dir_listings(bundles, run_dir):
    content = members(bundles["full"])
    lock = dvchash.read_lock((run_dir / "dvc.lock").read_text())
    for out in lock.outs:
        assert any(
            n == f"pipeline/{out.path}" or n.startswith(f"pipeline/{out.path}/") for n in content
        ), out.path
        if out.is_dir:
            listing = content[f"dvc-dirs/{out.md5}"]
            # the listing is DVC's own .dir object: same bytes as in DVC's cache
            cached = run_dir / ".dvc" / "cache" / "files" / "md5" / out.md5[:2] / out.md5[2:]
            if cached.is_file():
                assert listing == cached.read_bytes()
            assert hashlib.md5(listing).hexdigest() + ".dir" == out.md5
    assert verify_bundle(bundles["full"]).ok


def test_bundles_are_byte_stable(run_dir, tmp_path):
    first = create_bundle(run_dir, tmp_path / "a.tar.gz").path.read_bytes()
    second = create_bundle(run_dir, tmp_path / "b.tar.gz").path.read_bytes()
    assert first == second


# ---- verify ---------------------------------------------------------------------------------


def test_verify_passes(bundles):
    for path in bundles.values():
        result = verify_bundle(path)
        assert result.ok, result.problems
        assert result.outs_checked >= 5


def test_flipped_byte_in_a_member_is_named(bundles, tmp_path):
    name = "pipeline/metrics/evaluate.json"
    bad = repack(
        bundles["plain"],
        tmp_path / "bad.tar.gz",
        {name: flip(members(bundles["plain"])[name])},
        fix_manifest=False,
    )
    with pytest.raises(BundleVerifyError) as caught:
        verify_bundle(bad).raise_for_problems()
    assert any(p.startswith(f"{name}: sha256") for p in caught.value.problems)
    # the manifest was not updated, and dvc.lock disagrees too
    assert any(p.startswith(f"{name}: md5") and "dvc.lock" in p for p in caught.value.problems)


def test_flipped_byte_in_the_archive_fails(bundles, tmp_path):
    raw = bundles["full"].read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(flip(raw, len(raw) // 2))
    with pytest.raises(BundleError) as caught:
        verify_bundle(bad).raise_for_problems()
    # the gzip checksum fails, naming where; members whose bytes changed are named by their hash
    assert "corrupt archive data" in caught.value.message


def test_tampered_artifact_is_caught_by_dvc_lock(bundles, tmp_path):
    """Whoever rewrites the manifest still cannot make an artifact match dvc.lock."""
    name = "pipeline/models/students/depth/model.safetensors"
    content = members(bundles["full"])
    bad = repack(
        bundles["full"], tmp_path / "bad.tar.gz", {name: flip(content[name])}, fix_manifest=True
    )
    with pytest.raises(BundleVerifyError) as caught:
        verify_bundle(bad).raise_for_problems()
    (problem,) = caught.value.problems
    assert problem.startswith(f"{name}: md5 ") and "dvc.lock (stage 'distill@depth')" in problem


def test_added_and_removed_files_in_an_out_are_named(bundles, tmp_path):
    added = "pipeline/models/students/width/extra.bin"
    removed = "pipeline/models/students/width/config.json"
    bad = repack(
        bundles["full"],
        tmp_path / "bad.tar.gz",
        {added: b"\x00" * 10, removed: b""},
        fix_manifest=True,
    )
    problems = verify_bundle(bad).problems
    assert any(p.startswith(f"{added}: not part of the out") for p in problems)
    assert any(p.startswith(f"{removed}: missing") for p in problems)


def test_forged_dir_listing_is_not_trusted(bundles, tmp_path):
    """A listing edited to match a tampered file no longer hashes to dvc.lock's value."""
    content = members(bundles["full"])
    lock = dvchash.read_lock(content["pipeline/dvc.lock"].decode())
    out = next(o for o in lock.outs if o.path == "models/students/depth")
    name = "pipeline/models/students/depth/model.safetensors"
    tampered = flip(content[name])
    listing = dvchash.parse_listing(content[f"dvc-dirs/{out.md5}"])
    listing["model.safetensors"] = hashlib.md5(tampered).hexdigest()
    edits = {name: tampered, f"dvc-dirs/{out.md5}": dvchash.dir_listing(listing)}
    problems = verify_bundle(
        repack(bundles["full"], tmp_path / "bad.tar.gz", edits, fix_manifest=True)
    ).problems
    assert problems == [
        f"pipeline/models/students/depth/: directory md5 {dvchash.dir_md5(listing)} differs from {out.md5} recorded in "
        "dvc.lock (stage 'distill@depth'): a file in it was modified, added or removed"
    ]


def test_unlisted_and_missing_members(bundles, tmp_path):
    content = members(bundles["plain"])
    edits = {"pipeline/extra.txt": b"hello", "pipeline/metrics/finetune.json": b""}
    problems = verify_bundle(
        repack(bundles["plain"], tmp_path / "bad.tar.gz", edits, fix_manifest=False)
    ).problems
    assert "pipeline/extra.txt: in the bundle but not listed in the manifest" in problems
    assert (
        "pipeline/metrics/finetune.json: listed in the manifest but missing from the bundle"
        in problems
    )
    assert content  # the original is untouched


def test_not_a_bundle(tmp_path):
    text = tmp_path / "x.tar.gz"
    text.write_text("hello")
    with pytest.raises(BundleError, match="not a readable tar.gz"):
        verify_bundle(text)
    with pytest.raises(BundleError, match="no such bundle"):
        verify_bundle(tmp_path / "missing.tar.gz")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(BundleVerifyError, match="manifest.json: missing"):
        verify_bundle(empty)


# ---- create refuses inconsistent runs -------------------------------------------------------


def test_create_refuses_a_workspace_that_no_longer_matches_dvc_lock(real_run_copy, tmp_path):
    root = real_run_copy
    metrics = root / "metrics" / "evaluate.json"
    metrics.write_text(metrics.read_text().replace("teacher", "teacher ", 1))
    with pytest.raises(BundleError) as caught:
        create_bundle(root, tmp_path / "b.tar.gz")
    assert "metrics/evaluate.json: md5" in caught.value.message
    assert not (tmp_path / "b.tar.gz").exists() and not list(tmp_path.glob(".b.tar.gz*"))


def test_create_needs_a_run(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("name: x\n")
    with pytest.raises(BundleError, match="dvc.lock not found"):
        create_bundle(tmp_path, tmp_path / "b.tar.gz")


def test_spec_detection(real_run_copy, tmp_path):
    root = real_run_copy
    (root / "other.yaml").write_text((root / "tiny.yaml").read_text())
    with pytest.raises(BundleError, match="several spec files"):
        create_bundle(root, tmp_path / "b.tar.gz")
    summary = create_bundle(root, tmp_path / "b.tar.gz", spec_file=root / "other.yaml")
    assert summary.spec_file == "spec/other.yaml"


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_round_trip(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(run_dir)
    runner = CliRunner()
    out = tmp_path / "run.tar.gz"
    created = runner.invoke(cli, ["bundle", "create", "--with-artifacts", "-o", str(out)])
    assert created.exit_code == 0, created.output
    assert f"wrote {out}" in created.output and "models/students/depth" in created.output
    verified = runner.invoke(cli, ["bundle", "verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert "ok (" in verified.output

    name = "pipeline/models/teacher/model.safetensors"
    bad = repack(out, tmp_path / "bad.tar.gz", {name: flip(members(out)[name])}, fix_manifest=True)
    failed = runner.invoke(cli, ["bundle", "verify", str(bad)])
    assert failed.exit_code == 1
    assert f"{name}: md5" in failed.output and "Traceback" not in failed.output


def test_gzip_header_is_deterministic(bundles):
    with open(bundles["plain"], "rb") as handle:
        header = handle.read(10)
    assert header[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    assert gzip.decompress(bundles["plain"].read_bytes())[:100]
