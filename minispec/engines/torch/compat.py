"""The few transformers APIs that moved between the versions we support (4.56 to 5.x).

Every version-dependent import goes through here, so supporting another release is one file.
CI runs the tiny real pipeline on the oldest declared transformers as well as the newest.
"""

from __future__ import annotations

import contextlib


def no_init_weights() -> contextlib.AbstractContextManager:
    """Context in which ``from_config`` skips weight initialisation (weights are loaded next)."""
    try:  # transformers >= 5
        from transformers.initialization import no_init_weights as skip
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights as skip
    return skip()


# --------------------------------------------------------------------------------------------
# files that load in transformers 4.x as well as 5.x

# tokenizer classes transformers 5 writes that 4.x does not know, and their 4.x equivalent
_TOKENIZER_CLASSES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_config(config: dict) -> dict:
    """``config.json`` readable by transformers 4.x too: legacy rope and dtype keys added.

    transformers 5 writes ``rope_parameters: {rope_theta, rope_type, ...}`` and ``dtype``; 4.x
    reads ``rope_theta``/``rope_scaling`` and ``torch_dtype`` and silently falls back to
    ``rope_theta = 10000`` without them: a model that loads but computes the wrong rotations.
    5.x reads the legacy keys as well, so both sets agree.
    """
    config = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", scaling)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    return config


def portable_tokenizer_config(config: dict) -> dict:
    """``tokenizer_config.json`` naming a tokenizer class that transformers 4.x has as well.

    The inputs are named too: 4.x's ``PreTrainedTokenizerFast`` otherwise returns
    ``token_type_ids``, which causal LMs' ``generate(**tokenizer(text))`` rejects.
    """
    config = dict(config)
    name = config.get("tokenizer_class")
    if name in _TOKENIZER_CLASSES_4X:
        config["tokenizer_class"] = _TOKENIZER_CLASSES_4X[name]
    config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    return config


def make_portable(directory) -> None:
    """Rewrite a saved HF directory's config files so that transformers 4.56+ and 5.x both load it."""
    import json
    from pathlib import Path

    for name, rewrite in (
        ("config.json", portable_config),
        ("tokenizer_config.json", portable_tokenizer_config),
    ):
        path = Path(directory) / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            path.write_text(
                json.dumps(rewrite(data), indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
