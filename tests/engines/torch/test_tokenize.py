"""The tokenize stage: real WikiText with the real SmolLM2 tokenizer, read back by Megatron-Core."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from minispec.cli import cli
from minispec.engines.torch import tokenize
from minispec.errors import StageError
from minispec.stage import run_stage

SPLITS = ("train", "validation", "test")


def megatron_dataset(prefix: Path):
    """Megatron-Core's reader; hold on to it while using its arrays (its __del__ unmaps them)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(str(prefix))


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def pipeline_with_jsonl(
    make_pipeline, splits: dict[str, list[str] | bytes], tokenizer_dir: Path | None = None, **spec
) -> Path:
    """A pipeline directory with data/jsonl/<split>.jsonl already written (as the data stage would)."""
    root = make_pipeline(spec)
    out = root / "data" / "jsonl"
    out.mkdir(parents=True)
    for split, content in splits.items():
        raw = (
            content
            if isinstance(content, bytes)
            else "".join(json.dumps({"text": t}) + "\n" for t in content).encode()
        )
        (out / f"{split}.jsonl").write_bytes(raw)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, root / "models" / "teacher")
    return root


@pytest.fixture
def tiny_tokenizer_dir(tmp_path, tiny_tokenizer) -> Path:
    tiny_tokenizer(tmp_path / "tiny-tokenizer")
    return tmp_path / "tiny-tokenizer"


# --------------------------------------------------------------------------------------------
# real data, real tokenizer, read by Megatron-Core


@pytest.mark.slow
def test_wikitext_matches_the_tokenizer_and_nemo_document_by_document(
    make_pipeline, wikitext_dir, smollm2_teacher_dir
):
    from transformers import AutoTokenizer

    root = make_pipeline(
        {"data": {"source": str(wikitext_dir), "splits": {"train": "test.jsonl"}, "workers": 2}}
    )
    shutil.copytree(smollm2_teacher_dir, root / "models" / "teacher")
    run_stage("data", None, root)
    run_stage("tokenize", None, root)

    tokenizer = AutoTokenizer.from_pretrained(root / "models" / "teacher")
    eod = tokenizer.eos_token_id
    metrics = json.loads((root / "metrics" / "tokenize.json").read_text())
    assert (
        metrics["dtype"] == "uint16"
        and metrics["eod_id"] == eod == 2
        and metrics["bos_added"] is False
    )
    for split in ("validation", "test"):
        dataset = megatron_dataset(root / "data" / "tokens" / f"{split}_text_document")
        assert dataset.index.dtype == np.uint16
        texts = texts_of(root / "data" / "jsonl" / f"{split}.jsonl")
        own = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
        # NeMo's HF wrapper: text_to_ids = convert_tokens_to_ids(tokenize(text)); no BOS
        nemo = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) for text in texts]
        assert own == nemo
        expected = [ids + [eod] for ids in own if ids]  # NeMo skips documents with no ids
        assert len(dataset) == len(expected) == len(texts) - sum(1 for t in texts if not t)
        for index, ids in enumerate(expected):
            assert dataset[index].tolist() == ids, f"{split} document {index}"
        stats = metrics["splits"][split]
        assert stats["documents"] == len(expected) and stats["tokens"] == sum(map(len, expected))
        assert stats["rows"] == len(texts) and stats["empty_skipped"] == len(texts) - len(expected)


def test_worker_counts_give_identical_files(
    make_pipeline, wikitext_dir, tiny_tokenizer_dir, monkeypatch
):
    texts = texts_of(wikitext_dir / "validation.jsonl")[:600]
    words = [
        " ".join(f"w{len(w) % 200}" for w in text.split()) for text in texts
    ]  # in-vocabulary words
    monkeypatch.setattr(tokenize, "BATCH_BYTES", 300)  # many batches through the pipeline
    outputs = []
    for workers in (1, 2):
        root = pipeline_with_jsonl(
            make_pipeline,
            dict.fromkeys(SPLITS, words),
            tiny_tokenizer_dir,
            data={"source": "x", "workers": workers},
        )
        run_stage("tokenize", None, root)
        outputs.append({p.name: p.read_bytes() for p in (root / "data" / "tokens").iterdir()})
        root.rename(root.with_name(f"w{workers}"))
    assert outputs[0] == outputs[1]
    dataset = megatron_dataset(
        Path(root.with_name("w2")) / "data" / "tokens" / "test_text_document"
    )
    assert len(dataset) == sum(1 for w in words if w)


def test_large_vocabulary_is_written_as_int32(make_pipeline, tmp_path, tiny_tokenizer):
    tiny_tokenizer(tmp_path / "big", words=70_000)
    root = pipeline_with_jsonl(
        make_pipeline,
        dict.fromkeys(SPLITS, ["w69999 w0", "", "w65535"]),
        tmp_path / "big",
        data={"source": "x", "workers": 1},
    )
    run_stage("tokenize", None, root)
    dataset = megatron_dataset(root / "data" / "tokens" / "train_text_document")
    assert dataset.index.dtype == np.int32
    assert [dataset[i].tolist() for i in range(len(dataset))] == [[70002, 3, 2], [65538, 2]]


def test_vocabulary_beyond_int32_is_refused():
    with pytest.raises(StageError, match="more than the int32 token dtype"):
        tokenize.token_dtype(2**31, "tok")
    assert tokenize.token_dtype(65_499, "tok") == np.uint16
    assert tokenize.token_dtype(65_500, "tok") == np.int32


def test_ids_outside_the_teachers_vocabulary_are_refused(make_pipeline, tiny_tokenizer_dir):
    root = pipeline_with_jsonl(
        make_pipeline,
        dict.fromkeys(SPLITS, ["w150 w1"]),
        tiny_tokenizer_dir,
        data={"source": "x", "workers": 1},
    )
    (root / "models" / "teacher" / "config.json").write_text(
        json.dumps({"model_type": "llama", "vocab_size": 100})
    )
    with pytest.raises(
        StageError, match=r"token id 153 is outside the teacher's vocabulary \(100 embeddings\)"
    ):
        run_stage("tokenize", None, root)
    assert not (root / "data" / "tokens").exists() and not (root / "metrics").exists()


def test_tokenizer_without_eos_is_refused(make_pipeline, tmp_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    tiny_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "noeos")
    root = pipeline_with_jsonl(
        make_pipeline,
        dict.fromkeys(SPLITS, ["w1"]),
        tmp_path / "noeos",
        data={"source": "x", "workers": 1},
    )
    with pytest.raises(StageError, match="no EOS"):
        run_stage("tokenize", None, root)


# --------------------------------------------------------------------------------------------
# bad input: file and line, exit code 1, no outputs


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "bad, message",
    [
        (b'{"text": "w1 w2', "invalid JSON"),
        (b'{"text": "caf\xe9"}', "invalid UTF-8"),
        (b'{"body": "w1"}', "no field 'text'"),
        (b'{"text": 5}', "field 'text' is int"),
        (b'{"text": "w1"}, {"text": "w2"}', "invalid JSON"),  # two records on one line
    ],
)
def test_bad_lines_are_reported_with_their_line_number(
    make_pipeline, tiny_tokenizer_dir, monkeypatch, workers, bad, message
):
    good = "".join(json.dumps({"text": f"w{i % 200} w7"}) + "\n" for i in range(3000)).encode()
    content = good + bad + b"\n" + good  # the bad line is number 3001, deep inside a later batch
    monkeypatch.setattr(tokenize, "BATCH_BYTES", 1000)
    splits = {"train": [f"w{i}" for i in range(5)], "validation": content, "test": ["w1"]}
    root = pipeline_with_jsonl(
        make_pipeline, splits, tiny_tokenizer_dir, data={"source": "x", "workers": workers}
    )
    with pytest.raises(StageError, match=rf"validation.jsonl:3001: {message}"):
        run_stage("tokenize", None, root)
    assert not (root / "data" / "tokens").exists()
    assert not list((root / "data").glob(".tokens*"))


def test_a_split_without_tokens_is_an_error(make_pipeline, tiny_tokenizer_dir, monkeypatch):
    splits = {"train": ["w1"], "validation": ["", "", ""], "test": ["w1"]}
    root = pipeline_with_jsonl(
        make_pipeline, splits, tiny_tokenizer_dir, data={"source": "x", "workers": 1}
    )
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli, ["stage", "tokenize"])
    assert result.exit_code == 1
    assert (
        "validation.jsonl: the validation split has no document with any token (3 rows)"
        in result.output
    )
    assert "Traceback" not in result.output and not (root / "data" / "tokens").exists()


def test_failure_keeps_previous_tokens(make_pipeline, tiny_tokenizer_dir):
    root = pipeline_with_jsonl(
        make_pipeline,
        dict.fromkeys(SPLITS, ["w1 w2", "w3"]),
        tiny_tokenizer_dir,
        data={"source": "x", "workers": 1},
    )
    run_stage("tokenize", None, root)
    before = {p.name: p.read_bytes() for p in (root / "data" / "tokens").iterdir()}
    (root / "data" / "jsonl" / "test.jsonl").write_bytes(b'{"text": "trunc')
    with pytest.raises(StageError):
        run_stage("tokenize", None, root)
    assert {p.name: p.read_bytes() for p in (root / "data" / "tokens").iterdir()} == before


def test_missing_inputs_say_which_stage_to_run(make_pipeline, tiny_tokenizer_dir):
    root = make_pipeline({})
    with pytest.raises(StageError, match="has no tokenizer") as info:
        run_stage("tokenize", None, root)
    assert "import stage" in info.value.hint
    shutil.copytree(tiny_tokenizer_dir, root / "models" / "teacher")
    with pytest.raises(StageError, match="train.jsonl not found"):
        run_stage("tokenize", None, root)


def test_data_tokenizer_overrides_the_teacher(make_pipeline, tiny_tokenizer_dir):
    root = pipeline_with_jsonl(
        make_pipeline,
        dict.fromkeys(SPLITS, ["w5"]),
        None,
        data={"source": "x", "tokenizer": str(tiny_tokenizer_dir), "workers": 1},
    )
    run_stage("tokenize", None, root)
    dataset = megatron_dataset(
        root / "data" / "tokens" / "test_text_document"
    )  # keep it: views die with it
    assert dataset[0].tolist() == [8, 2]
    metrics = json.loads((root / "metrics" / "tokenize.json").read_text())
    assert metrics["tokenizer"] == str(tiny_tokenizer_dir)


def test_background_stages_stop_cleanly_when_the_consumer_fails():
    import threading

    closed = []

    def source():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    def doubled(items):
        try:
            for item in items:
                yield 2 * item
        finally:
            items.close()

    pipeline = tokenize.in_background(doubled(tokenize.in_background(source())))
    assert [next(pipeline) for _ in range(3)] == [0, 2, 4]
    pipeline.close()
    assert closed == [True]
    assert not [t for t in threading.enumerate() if t.name == "minispec-tokenize"]

    def failing():
        yield 1
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        list(tokenize.in_background(failing()))


def test_hub_tokenizer_offline_says_what_to_do(make_pipeline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = pipeline_with_jsonl(
        make_pipeline,
        dict.fromkeys(SPLITS, ["w1"]),
        None,
        data={"source": "x", "tokenizer": "hf://HuggingFaceTB/SmolLM2-135M"},
    )
    with pytest.raises(StageError, match="cannot download hf://HuggingFaceTB/SmolLM2-135M") as info:
        run_stage("tokenize", None, root)
    assert "data.tokenizer" in info.value.hint
