"""pydantic validation errors → lint messages a user can act on.

pydantic's own texts ("Input should be greater than or equal to 1") speak of inputs and
Python types; a spec author needs the key, the allowed values or range, what was found and how
to fix it. :func:`explain` turns one pydantic error (already mapped to the key path in the
user's data) into ``(message, hint)``.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, get_args

KeyPath = tuple[str | int, ...]  # a location in a spec: ("prune", "width", "target_hidden_size")

# Hints for fields whose fix is not obvious from the message alone ('*': any variant name).
DROP_LAYERS_HINT = "list the 1-indexed layers to drop (the first is 1), or use target_num_layers"
STUDENTS_HINT = "omit 'students' to distill every prune variant, or remove distill to skip it"
FIELD_HINTS: dict[tuple[str, ...], str] = {
    ("prune", "*", "drop_layers"): DROP_LAYERS_HINT,
    ("distill", "students"): STUDENTS_HINT,
    ("evaluate", "splits"): "list the splits to score: validation and/or test",
    ("data", "split_ratio"): 'write train,validation,test weights, e.g. "98,1,1"',
    ("version",): "this minispec reads specs with version: 1",
}

# Names users bring from other tools for a value spelt differently here (checked before the
# spelling-based 'did you mean', which would suggest 'cpu' for 'gpu').
SYNONYMS = {
    "gpu": "cuda",
    "nvidia": "cuda",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "float32": "fp32",
    "bfloat16": "bf16",
    "half": "float16",
    "kl": "logits_kl",
    "forward_kl": "logits_kl",
    "megatron": "nemo",
    "pytorch": "torch",
}


# Keys users bring from NeMo/Megatron or Hugging Face configs, and minispec's names for them.
KEY_SYNONYMS = {
    "learning_rate": "lr",
    "min_learning_rate": "min_lr",
    "max_steps": "steps",
    "train_iters": "steps",
    "warmup": "warmup_steps",
    "batch_size": "global_batch_size",
    "gbs": "global_batch_size",
    "mbs": "micro_batch_size",
    "val_check_interval": "val_interval",
    "limit_val_batches": "val_batches",
    "encoder_seq_length": "seq_length",
    "max_seq_length": "seq_length",
    "tp": "tensor_parallel",
    "tensor_model_parallel_size": "tensor_parallel",
    "pp": "pipeline_parallel",
    "pipeline_model_parallel_size": "pipeline_parallel",
    "gpus": "devices",
    "num_nodes": "nodes",
    "model": "source",
    "path": "source",
}


def explain(error: dict[str, Any], path: KeyPath, raw: dict[str, Any]) -> tuple[str, str | None]:
    """``(message, hint)`` for one pydantic error at ``path`` of the user's data."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    name = str(path[-1]) if path else ""
    hint = _field_hint(path)

    if kind == "extra_forbidden":
        allowed = allowed_keys(path[:-1], raw)
        listed = f"allowed keys here: {', '.join(allowed)}" if allowed else None
        synonym = KEY_SYNONYMS.get(name.lower())
        if synonym in allowed:
            return f"unknown key '{name}'", f"use '{synonym}' (minispec's name for '{name}')"
        return f"unknown key '{name}'", did_you_mean(name, allowed) or listed
    if kind == "missing":
        return f"missing required key '{name}'", hint or _description_hint(path, raw)
    if kind == "union_tag_invalid":
        tag = got.get("kind") if isinstance(got, dict) else None
        close = did_you_mean(str(tag), ["depth", "width"])
        return f"unknown prune kind {tag!r}", close or "use kind: depth or kind: width"
    if kind == "union_tag_not_found":
        return (
            "a prune variant needs a 'kind'",
            "add kind: depth (remove layers) or kind: width (shrink sizes)",
        )
    if kind == "literal_error":
        return _choice_message(got, _choices(ctx.get("expected", "")), hint)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be {range_text(path, raw, ctx)} (got {_show(got)})", hint
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        what = "characters" if kind == "string_too_short" else "items"
        return ("must not be empty" if least == 1 else f"needs at least {least} {what}"), hint
    if kind == "string_pattern_mismatch":
        return _pattern_message(path, got), hint
    typed = _type_message(kind, got, name)
    if typed is not None:
        return typed[0], typed[1] or hint
    return f"{_lower_first(error['msg'])} (got {_show(got)})", hint


def _choice_message(got: Any, choices: list[Any], hint: str | None) -> tuple[str, str | None]:
    shown = ", ".join(repr(c) for c in choices)
    text = f"must be {shown}" if len(choices) == 1 else f"must be one of {shown}"
    close = None
    if isinstance(got, str):
        synonym = SYNONYMS.get(got.strip().lower())
        if synonym in choices:
            close = f"use '{synonym}' (minispec's name for '{got}')"
        else:
            close = did_you_mean(got, [str(c) for c in choices])
    return f"{text} (got {_show(got)})", close or hint


def _type_message(kind: str, got: Any, name: str) -> tuple[str, str | None] | None:
    """A value of the wrong type: say what was expected, what came, and how to write it."""
    if kind == "int_type":
        return _int_message(got)
    if kind == "float_type":
        return f"must be a number (got {_show(got)})", _unquote_hint(got, float)
    if kind == "finite_number":
        return f"must be a finite number (got {_show(got)})", None
    if kind == "bool_type":
        yaml11 = isinstance(got, str) and got.lower() in ("yes", "no", "on", "off", "y", "n")
        hint = "YAML 1.2 reads yes/no/on/off as text; write true or false" if yaml11 else None
        return f"must be true or false (got {_show(got)})", hint
    if kind == "string_type":
        return f"must be a string (got {_show(got)})", "quote the value, e.g. '...'"
    if kind == "list_type":
        return f"must be a list (got {_show(got)})", "write [a, b] or one '- item' per line"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if got is None:
            return (
                f"'{name}' has no value; it must be a mapping of keys",
                "indent its keys under it, or remove the line to use the defaults",
            )
        return (
            f"must be a mapping of keys to values (got {_show(got)})",
            "indent its keys under it, one 'key: value' per line",
        )
    return None


# --------------------------------------------------------------------------------------------
# the model behind a key path


def model_at(path: KeyPath, raw: dict[str, Any]) -> Any:
    """The pydantic model class describing the mapping at ``path`` (None when there is none)."""
    from minispec.spec.model import DepthPrune, Spec, WidthPrune

    model: Any = Spec
    node: Any = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if model is Spec and part == "prune":
            model = "variants"
            continue
        if model == "variants":
            kind = node.get("kind") if isinstance(node, dict) else None
            model = {"depth": DepthPrune, "width": WidthPrune}.get(kind)
            if model is None:
                return None
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return None
        model = _model_of(info.annotation)
        if model is None:
            return None
    return None if model == "variants" else model


def field_at(path: KeyPath, raw: dict[str, Any]) -> Any:
    """The pydantic FieldInfo of the key at ``path`` (a list item: its list's field)."""
    named = [i for i, part in enumerate(path) if isinstance(part, str)]
    if not named:
        return None
    last = named[-1]
    model = model_at(tuple(path[:last]), raw)
    return getattr(model, "model_fields", {}).get(path[last]) if model is not None else None


def allowed_keys(path: KeyPath, raw: dict[str, Any]) -> list[str]:
    model = model_at(path, raw)
    return sorted(getattr(model, "model_fields", {})) if model is not None else []


def _model_of(annotation: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def range_text(path: KeyPath, raw: dict[str, Any], ctx: dict[str, Any]) -> str:
    """The whole allowed range of a number, e.g. 'between 8 and 1048576' or '> 0 and ≤ 1'."""
    bounds = dict(ctx)
    info = field_at(path, raw) if path and isinstance(path[-1], str) else None
    for item in getattr(info, "metadata", []) or []:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(item, key, None)
            if value is not None:
                bounds.setdefault(key, value)
    low = (
        ("≥", bounds["ge"]) if "ge" in bounds else ((">", bounds["gt"]) if "gt" in bounds else None)
    )
    high = (
        ("≤", bounds["le"]) if "le" in bounds else (("<", bounds["lt"]) if "lt" in bounds else None)
    )
    if low and high and low[0] == "≥" and high[0] == "≤":
        return f"between {_num(low[1])} and {_num(high[1])}"
    parts = []
    for bound in (low, high):
        if bound is not None:
            parts.append(f"{bound[0]} {_num(bound[1])}")
    return " and ".join(parts)


# --------------------------------------------------------------------------------------------
# small helpers


def _field_hint(path: KeyPath) -> str | None:
    keys = tuple(p for p in path if isinstance(p, str))
    for pattern, hint in FIELD_HINTS.items():
        if len(keys) == len(pattern) and all(
            p in ("*", k) for p, k in zip(pattern, keys, strict=True)
        ):
            return hint
    return None


def _description_hint(path: KeyPath, raw: dict[str, Any]) -> str | None:
    info = field_at(path, raw)
    description = getattr(info, "description", None)
    if not description:
        return None
    first = description.split(". ")[0].rstrip(".")
    return first[0].lower() + first[1:] if first else None


def _choices(expected: str) -> list[Any]:
    choices: list[Any] = re.findall(r"'([^']*)'", expected)
    if not choices:
        choices = [int(n) for n in re.findall(r"-?\d+", expected)]
    return choices


def _pattern_message(path: KeyPath, got: Any) -> str:
    if path == ("name",) or (len(path) == 2 and path[0] == "prune"):
        what = "name" if path == ("name",) else "variant name"
        return f"invalid {what} {_show(got)}: start with a letter; use letters, digits, '_' and '-' (at most 64)"
    if path == ("data", "split_ratio"):
        return f"must be three comma-separated weights train,validation,test (got {_show(got)})"
    return f"does not match the expected format (got {_show(got)})"


def _int_message(got: Any) -> tuple[str, str | None]:
    if isinstance(got, bool):
        return f"must be an integer, not {str(got).lower()}", None
    if isinstance(got, float) and got.is_integer():
        return f"must be a whole number (got {got!r})", f"write {int(got)}"
    return f"must be an integer (got {_show(got)})", _unquote_hint(got, int)


def _unquote_hint(got: Any, kind: type) -> str | None:
    if not isinstance(got, str):
        return None
    try:
        kind(got.strip())
    except ValueError:
        return None
    return "remove the quotes: numbers are written without them"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"the date {value.isoformat()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def did_you_mean(word: str, choices: list[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
