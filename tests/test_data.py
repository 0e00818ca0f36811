"""The data stage on real WikiText files, every local format, ratio splits and bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec import data
from minispec.cli import cli
from minispec.errors import StageError
from minispec.stage import run_stage


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text(
        "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(root: Path) -> list[str]:
    """Anything the stage left under data/ or metrics/ (must be nothing after a failure)."""
    return (
        sorted(str(p.relative_to(root)) for d in ("data", "metrics") for p in (root / d).rglob("*"))
        if root.exists()
        else []
    )


# --------------------------------------------------------------------------------------------
# real data


def test_wikitext_splits_are_copied_exactly(make_pipeline, wikitext_dir):
    root = make_pipeline({"data": {"source": str(wikitext_dir), "splits": {"train": "test.jsonl"}}})
    run_stage("data", None, root)

    out = root / "data" / "jsonl"
    assert sorted(p.name for p in out.iterdir()) == [
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    # rows kept exactly, empty WikiText lines included, with real newlines between records
    assert sha256(out / "validation.jsonl") == sha256(wikitext_dir / "validation.jsonl")
    assert sha256(out / "test.jsonl") == sha256(wikitext_dir / "test.jsonl")
    assert (out / "train.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()

    metrics = json.loads((root / "metrics" / "data.json").read_text())
    validation = metrics["splits"]["validation"]
    texts = texts_of(wikitext_dir / "validation.jsonl")
    assert validation["rows"] == len(texts) == 3760
    assert validation["empty_rows"] == sum(1 for t in texts if not t) > 0
    assert validation["characters"] == sum(map(len, texts))
    assert validation["sha256"] == sha256(out / "validation.jsonl")
    assert metrics["splits"]["test"]["rows"] == 4358
    # files named as params.yaml names the source: relative to the pipeline directory, so a
    # copy of the pipeline elsewhere records the same metrics
    relative = Path(os.path.relpath(wikitext_dir, root)).as_posix()
    assert validation["from"] == f"{relative}/validation.jsonl"


def test_ratio_split_is_exact_seeded_and_order_preserving(make_pipeline, wikitext_dir):
    spec = {
        "seed": 7,
        "data": {"source": str(wikitext_dir / "validation.jsonl"), "split_ratio": "98,1,1"},
    }
    root = make_pipeline(spec, name="a")
    run_stage("data", None, root)
    source = texts_of(wikitext_dir / "validation.jsonl")
    splits = {
        s: texts_of(root / "data" / "jsonl" / f"{s}.jsonl") for s in ("train", "validation", "test")
    }

    assert (
        [len(splits[s]) for s in ("train", "validation", "test")]
        == data.ratio_counts("98,1,1", 3760)
        == [3685, 38, 37]
    )
    assert Counter(t for texts in splits.values() for t in texts) == Counter(source)  # a partition
    for texts in splits.values():  # order inside a split follows the source
        assert _is_subsequence(texts, source)

    again = make_pipeline(spec, name="b")
    run_stage("data", None, again)
    other_seed = make_pipeline({**spec, "seed": 8}, name="c")
    run_stage("data", None, other_seed)
    for split in ("train", "validation", "test"):
        assert sha256(root / f"data/jsonl/{split}.jsonl") == sha256(
            again / f"data/jsonl/{split}.jsonl"
        )
    assert sha256(root / "data/jsonl/test.jsonl") != sha256(other_seed / "data/jsonl/test.jsonl")
    metrics = json.loads((root / "metrics" / "data.json").read_text())
    assert metrics["seed"] == 7 and metrics["split_ratio"] == "98,1,1"


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


@pytest.mark.parametrize(
    "ratio, total, expected",
    [
        ("98,1,1", 100, [98, 1, 1]),
        ("1,1,1", 10, [4, 3, 3]),
        ("0.5,0.25,0.25", 7, [3, 2, 2]),
        ("98,1,1", 3760, [3685, 38, 37]),
    ],
)
def test_ratio_counts_sum_to_the_total(ratio, total, expected):
    counts = data.ratio_counts(ratio, total)
    assert counts == expected and sum(counts) == total


def test_ratio_that_empties_a_split_is_refused(make_pipeline, tmp_path):
    source = write_jsonl(tmp_path / "all.jsonl", [f"doc {i}" for i in range(10)])
    root = make_pipeline({"data": {"source": str(source), "split_ratio": "98,1,1"}})
    with pytest.raises(StageError, match="leaves the validation split empty"):
        run_stage("data", None, root)
    assert leftovers(root) == []


# --------------------------------------------------------------------------------------------
# local formats and directory layouts


def test_directory_with_aliases_and_every_format(make_pipeline, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with gzip.open(corpus / "training.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(
            json.dumps({"body": "first ünïcode"}) + "\n\n" + json.dumps({"body": ""}) + "\n"
        )
    pq.write_table(
        pa.table({"body": ["v1", "v2 \n with newline"], "other": [1, 2]}), corpus / "dev.parquet"
    )
    (corpus / "test.txt").write_text("line one\nline two\n\nline four\n", encoding="utf-8")
    (corpus / "notes.md").write_text("ignored")
    root = make_pipeline({"data": {"source": str(corpus), "text_field": "body"}})
    run_stage("data", None, root)

    out = root / "data" / "jsonl"
    assert texts_of(out / "train.jsonl") == [
        "first ünïcode",
        "",
    ]  # blank JSONL lines are not records
    assert texts_of(out / "validation.jsonl") == ["v1", "v2 \n with newline"]
    assert texts_of(out / "test.jsonl") == ["line one", "line two", "", "line four"]


def test_parquet_shards_are_read_in_order_and_json_arrays_work(make_pipeline, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"]}), corpus / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": ["c"]}), corpus / "train-00001-of-00002.parquet")
    (corpus / "validation.json").write_text(json.dumps([{"text": "v"}, {"text": "w"}]))
    (corpus / "test.json").write_text(json.dumps({"data": [{"text": "t"}]}))
    root = make_pipeline({"data": {"source": str(corpus)}})
    run_stage("data", None, root)
    out = root / "data" / "jsonl"
    assert texts_of(out / "train.jsonl") == ["a", "b", "c"]
    assert texts_of(out / "validation.jsonl") == ["v", "w"]
    assert texts_of(out / "test.jsonl") == ["t"]


def test_split_mapping_with_globs(make_pipeline, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "parts").mkdir(parents=True)
    write_jsonl(corpus / "parts" / "b.jsonl", ["b"])
    write_jsonl(corpus / "parts" / "a.jsonl", ["a"])
    write_jsonl(corpus / "heldout.jsonl", ["h"])
    write_jsonl(corpus / "test.jsonl", ["t"])
    splits = {"train": "parts/*.jsonl", "validation": "heldout.jsonl"}
    root = make_pipeline({"data": {"source": str(corpus), "splits": splits}})
    run_stage("data", None, root)
    out = root / "data" / "jsonl"
    assert texts_of(out / "train.jsonl") == ["a", "b"]
    assert texts_of(out / "validation.jsonl") == ["h"]
    assert texts_of(out / "test.jsonl") == ["t"]


def test_relative_source_is_relative_to_the_pipeline_directory(make_pipeline):
    root = make_pipeline({"data": {"source": "corpus"}})
    (root / "corpus").mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(root / "corpus" / f"{split}.jsonl", [split])
    run_stage("data", None, root)
    assert texts_of(root / "data" / "jsonl" / "validation.jsonl") == ["validation"]


# --------------------------------------------------------------------------------------------
# bad input: a clear error naming file and line, exit code 1, nothing half-written


def corpus_with_bad_train(tmp_path: Path, bad_train: bytes) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "train.jsonl").write_bytes(bad_train)
    write_jsonl(corpus / "validation.jsonl", ["v"])
    write_jsonl(corpus / "test.jsonl", ["t"])
    return corpus


GOOD = b'{"text": "one"}\n{"text": "two"}\n'


@pytest.mark.parametrize(
    "content, message",
    [
        (GOOD + b'{"body": "no text"}\n', r"train.jsonl:3: no field 'text' \(fields: body\)"),
        (GOOD + b'{"text": "caf\xe9"}\n', r"train.jsonl:3: invalid UTF-8"),
        (GOOD + b'{"text": "cut in the mid', r"train.jsonl:3: invalid JSON"),
        (GOOD + b'{"text": null}\n', r"train.jsonl:3: field 'text' is null, expected a string"),
        (GOOD + b'{"text": "\\ud800"}\n', r"train.jsonl:3: field 'text' holds invalid Unicode"),
        (GOOD + b'["a list"]\n', r"train.jsonl:3: expected a JSON object"),
        (b"", r"the train split \(.*train.jsonl\) is empty"),
    ],
)
def test_bad_records_fail_with_file_and_line(
    make_pipeline, tmp_path, monkeypatch, content, message
):
    corpus = corpus_with_bad_train(tmp_path, content)
    root = make_pipeline({"data": {"source": str(corpus)}})
    with pytest.raises(StageError, match=message):
        run_stage("data", None, root)
    assert leftovers(root) == []

    monkeypatch.chdir(root)  # the CLI: `error: ...`, exit 1, no traceback
    result = CliRunner().invoke(cli, ["stage", "data"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_failure_keeps_previous_outputs(make_pipeline, tmp_path):
    corpus = corpus_with_bad_train(tmp_path, GOOD)
    root = make_pipeline({"data": {"source": str(corpus)}})
    run_stage("data", None, root)
    before = (root / "data/jsonl/train.jsonl").read_bytes()
    (corpus / "train.jsonl").write_bytes(GOOD + b'{"text": "trunc')
    with pytest.raises(StageError):
        run_stage("data", None, root)
    assert (root / "data/jsonl/train.jsonl").read_bytes() == before
    assert not [p for p in (root / "data").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_missing_split_says_how_to_map_it(make_pipeline, wikitext_dir):
    root = make_pipeline({"data": {"source": str(wikitext_dir)}})
    with pytest.raises(StageError, match="no train split") as info:
        run_stage("data", None, root)
    assert "data.splits" in info.value.hint and "split_ratio" in info.value.hint


def test_single_file_needs_a_ratio(make_pipeline, wikitext_dir):
    root = make_pipeline({"data": {"source": str(wikitext_dir / "test.jsonl")}})
    with pytest.raises(StageError, match="single file") as info:
        run_stage("data", None, root)
    assert "split_ratio" in info.value.hint


def test_ambiguous_split_files_are_refused(make_pipeline, tmp_path):
    corpus = corpus_with_bad_train(tmp_path, GOOD)
    write_jsonl(corpus / "training.jsonl", ["x"])
    root = make_pipeline({"data": {"source": str(corpus)}})
    with pytest.raises(StageError, match="several candidates for the train split"):
        run_stage("data", None, root)


def test_missing_source(make_pipeline, tmp_path):
    root = make_pipeline({"data": {"source": str(tmp_path / "nowhere")}})
    with pytest.raises(StageError, match="does not exist"):
        run_stage("data", None, root)


def test_missing_parquet_column_and_damaged_parquet(make_pipeline, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = corpus_with_bad_train(tmp_path, GOOD)
    (corpus / "train.jsonl").unlink()
    pq.write_table(pa.table({"content": ["x"]}), corpus / "train.parquet")
    root = make_pipeline({"data": {"source": str(corpus)}})
    with pytest.raises(StageError, match=r"train.parquet: no column 'text' \(columns: content\)"):
        run_stage("data", None, root)
    (corpus / "train.parquet").write_bytes((corpus / "train.parquet").read_bytes()[:40])
    with pytest.raises(StageError, match="train.parquet: not a readable Parquet file"):
        run_stage("data", None, root)


# --------------------------------------------------------------------------------------------
# the hub (never reached in tests: conftest sets HF_HUB_OFFLINE=1)


def test_hub_source_offline_says_how_to_use_local_files(make_pipeline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    root = make_pipeline({"data": {"source": "hf://wikitext/wikitext-103-v1"}})
    with pytest.raises(
        StageError,
        match=r"cannot reach the Hugging Face Hub to load hf://wikitext/wikitext-103-v1 \(HF_HUB_OFFLINE is set\)",
    ) as info:
        run_stage("data", None, root)
    assert "--set data.source=DIR" in info.value.hint
    assert leftovers(root) == []


def test_json_files_holding_json_lines_and_truncated_arrays(make_pipeline, tmp_path):
    corpus = corpus_with_bad_train(tmp_path, GOOD)
    (corpus / "train.jsonl").unlink()
    (corpus / "train.json").write_text('{"text": "x"}\n{"text": "y"}\n')
    root = make_pipeline({"data": {"source": str(corpus)}})
    run_stage("data", None, root)
    assert texts_of(root / "data/jsonl/train.jsonl") == ["x", "y"]

    (corpus / "train.json").write_text('[\n  {"text": "x"},\n  {"text": "y"\n')
    with pytest.raises(StageError, match=r"train.json:4: invalid JSON"):
        run_stage("data", None, root)
