"""The transformers range the pyproject admits, tested at both ends.

`make test` runs the whole suite on the newest transformers, then this module, the tiny real
pipeline (tests/test_end_to_end.py) and the depth, width and export tests again in a second
environment (`.venv-oldest`) holding the oldest declared transformers. Each run points
``MINISPEC_OTHER_PYTHON`` at the other environment's interpreter, so the exports of the real
run made with one major version are loaded by the other, as an older or newer serving stack
would load them.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from real_pipeline import STUDENTS

from minispec import layout

OTHER_PYTHON = os.environ.get("MINISPEC_OTHER_PYTHON")
PROMPT = "The history of the city begins in 1990 when the album"

# Loads an export with the plain Auto classes (no minispec) and prints its logits for PROMPT.
LOAD_AND_SCORE = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, prompt = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inputs = tokenizer(prompt, return_tensors="pt")  # as the model card shows
    ids = inputs.input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    print(json.dumps({
        "transformers": transformers.__version__,
        "tokenizer_class": type(tokenizer).__name__,
        "ids": ids[0].tolist(),
        "logits": logits.tolist(),
        "generated": generated[0].tolist(),
    }))
    """
)


def score(python: str, path: Path) -> dict:
    done = subprocess.run(
        [python, "-c", LOAD_AND_SCORE, str(path), PROMPT],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    OTHER_PYTHON is None,
    reason="MINISPEC_OTHER_PYTHON names no second environment (`make test` sets it)",
)
@pytest.mark.parametrize("variant", STUDENTS)
def test_exports_load_and_compute_the_same_in_the_other_transformers(real_run, variant):
    import sys

    import transformers

    export = real_run.root / layout.export_dir(variant)
    here = score(sys.executable, export)
    there = score(OTHER_PYTHON, export)
    assert here["transformers"] == transformers.__version__
    assert there["transformers"].split(".")[0] != here["transformers"].split(".")[0], (
        "the other environment must hold the other major version of transformers"
    )
    assert there["ids"] == here["ids"]  # the same tokenizer, whichever class loaded it
    # the same architecture: rope base, head_dim and norms read alike (a wrong rope_theta
    # would load silently and change every logit)
    torch.testing.assert_close(
        torch.tensor(there["logits"]), torch.tensor(here["logits"]), rtol=1e-4, atol=1e-4
    )
    assert there["generated"] == here["generated"]


def test_export_config_names_rope_and_dtype_for_both_major_versions(real_run):
    """transformers 5 writes ``rope_parameters``/``dtype``; 4.x reads ``rope_theta``/``torch_dtype``."""
    config = json.loads((real_run.root / layout.export_dir("depth") / "config.json").read_text())
    if "rope_parameters" in config:
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config.get("torch_dtype", config.get("dtype")) == config.get(
        "dtype", config.get("torch_dtype")
    )
    tokenizer_config = json.loads(
        (real_run.root / layout.export_dir("depth") / "tokenizer_config.json").read_text()
    )
    assert tokenizer_config.get("tokenizer_class") != "TokenizersBackend"
