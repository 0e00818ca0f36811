"""``export@<variant>`` stage: a variant's final model → ``export/<variant>/`` with a model card.

The final model is the distilled student, or the pruned model when the variant is not distilled
(``layout.final_model_dir``). The export is a standard HF directory (``export.dtype``; ``auto``
keeps the working dtype) that plain ``transformers`` loads, plus ``README.md``: a model card that
states where the model comes from — teacher, spec name and hash, the prune variant's settings,
distillation steps, tokens and final validation loss (from ``metrics/distill-<variant>.json``,
written by the training stage; read defensively), parameter counts and how to load it — and
``minispec.json``, the same provenance for programs.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from minispec import layout
from minispec.engines.torch.modeling import (
    count_parameters,
    load_model,
    load_tokenizer,
    save_model,
)
from minispec.errors import StageError
from minispec.shapes import ModelShapes
from minispec.sources import parse_source

TRAINING_KEYS = (
    "steps",
    "tokens",
    "initial_val_loss",
    "final_val_loss",
    "final_train_loss",
)  # no throughput: the same student must export to the same bytes on any machine


def run(spec, variant: str, root: Path) -> None:
    if variant not in spec.prune:
        raise StageError(
            f"no prune variant '{variant}' in the spec",
            hint=f"variants: {', '.join(spec.prune) or 'none'}",
        )
    source = root / layout.final_model_dir(spec, variant)
    if not (source / "config.json").exists():
        stage = f"distill@{variant}" if variant in spec.students else f"prune@{variant}"
        raise StageError(f"{source} not found", hint=f"run the {stage} stage first")
    dtype = export_dtype(spec.export.dtype)
    model = load_model(source, dtype=dtype)
    tokenizer = load_tokenizer(source)
    training = (
        read_training_metrics(root / layout.metrics_path(f"distill@{variant}"))
        if variant in spec.students
        else None
    )
    provenance = build_provenance(spec, variant, model, training)
    provenance.update(card_facts(spec, variant, root))
    out = root / layout.export_dir(variant)
    card = model_card(provenance, layout.export_dir(variant))
    save_model(
        model,
        tokenizer,
        out,
        extra_files={"README.md": card, "minispec.json": json.dumps(provenance, indent=2) + "\n"},
    )
    print(
        f"export: {source} → {out} ({provenance['parameters']['total']:,} parameters, {provenance['dtype']})",
        file=sys.stderr,
    )


def export_dtype(name: str):
    """``auto`` keeps the checkpoint's dtype; anything else casts to it."""
    import torch

    return None if name == "auto" else getattr(torch, name)


def spec_hash(spec) -> str:
    """sha256 of the resolved spec as canonical JSON (sorted keys, no whitespace): the params' identity."""
    canonical = json.dumps(
        spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def card_facts(spec, variant: str, root: Path) -> dict:
    """Front matter facts (license, base model, datasets) and the variant's lm-eval scores."""
    from minispec.engines.torch.card_meta import dataset_ids, teacher_facts

    scores = {}
    path = root / layout.HARNESS_SCORES
    if spec.evaluate.harness is not None and path.is_file():
        try:
            scores = json.loads(path.read_text(encoding="utf-8"))["students"].get(variant) or {}
        except (OSError, ValueError, KeyError, AttributeError):
            scores = {}
    return {
        **teacher_facts(spec.teacher.source, root),
        "datasets": dataset_ids(spec.data.source),
        "harness": scores,
    }


def read_training_metrics(path: Path) -> dict | None:
    """The numbers a training stage left in its metrics JSON (and the info file beside it:
    ``steps`` is a setting), or None when there are none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info_file = path.parent / "info" / path.name
        if isinstance(data, dict) and info_file.is_file():
            data = {**data, **json.loads(info_file.read_text(encoding="utf-8"))}
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        print(
            f"warning: {path} is unreadable ({exc}); the model card says 'not distilled'",
            file=sys.stderr,
        )
        return None
    if not isinstance(data, dict):
        return None
    numbers = {k: data[k] for k in TRAINING_KEYS if _is_number(data.get(k))}
    return numbers or None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_provenance(spec, variant: str, model, training: dict | None) -> dict:
    config = model.config
    prune = spec.prune[variant].model_dump(mode="json", exclude_none=True)
    distill = None
    if training is not None and spec.distill is not None:
        distill = {
            **training,
            "loss": spec.distill_for(variant).loss.model_dump(mode="json", exclude_defaults=False),
        }
    return {
        "name": f"{spec.name}-{variant}",
        "spec": spec.name,
        "spec_sha256": spec_hash(spec),
        "teacher": spec.teacher.source,
        "teacher_revision": spec.teacher.revision,
        "teacher_corrected": spec.finetune is not None,
        "data": spec.data.source,
        "variant": variant,
        "prune": prune,
        "distill": distill,
        "dtype": str(model.dtype).removeprefix("torch."),
        "parameters": count_parameters(model),
        "architecture": ModelShapes.from_hf_object(config).architecture(),
    }


def model_card(p: dict, path: str) -> str:
    """README.md with YAML front matter (the keys the Hub reads) and a provenance section."""
    teacher = parse_source(p["teacher"])
    front = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- minispec",
        "- pruned",
    ]
    if p["distill"]:
        front.append("- distilled")
    base_model = p.get("base_model") or (teacher.repo if teacher.kind == "hub" else None)
    note = p.get("base_model_note")  # a GGUF teacher's: where base_model came from, or why none
    if base_model:
        front.append(f"base_model: {base_model}")
        if note:
            front.append(f"# base_model: {note}")
    else:
        front += [f"# {line}" for line in _base_model_missing(p["teacher"], note)]
    license_ = p.get("license")
    front.append(f"license: {license_ or 'unknown'}")
    if not license_:
        front.append("# the teacher's license is not known to minispec: check its terms")
    if p.get("datasets"):
        front.append("datasets:")
        front += [f"- {name}" for name in p["datasets"]]
    if p.get("harness"):
        front += _model_index(p)
    front.append("---")

    arch = p["architecture"]
    params = p["parameters"]
    settings = ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in p["prune"].items())
    teacher_text = f"`{p['teacher']}`" + (
        f" at revision `{p['teacher_revision']}`" if p["teacher_revision"] else ""
    )
    rows = [
        (
            "Teacher",
            teacher_text
            + (" (corrected by fine-tuning on the data first)" if p["teacher_corrected"] else ""),
        ),
        ("Base model on the Hub", _base_model_row(base_model, note)),
        ("Data", f"`{p['data']}`"),
        ("Spec", f"`{p['spec']}`, sha256 `{p['spec_sha256']}`"),
        ("Prune variant", f"`{p['variant']}`: {settings}"),
        ("Distillation", _distill_text(p["distill"])),
        ("Final validation loss", _loss_text(p["distill"])),
        (
            "Parameters",
            f"{params['total']:,} total, {params['non_embedding']:,} without embeddings",
        ),
        (
            "Architecture",
            f"{arch['model_type']}: {arch['num_hidden_layers']} layers, hidden {arch['hidden_size']}, "
            f"MLP {arch['intermediate_size']}, {arch['num_attention_heads']} heads / "
            f"{arch['num_key_value_heads']} KV heads of {arch['head_dim']}, vocabulary {arch['vocab_size']}",
        ),
        ("Weights", f"{p['dtype']}, safetensors"),
    ]
    table = ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    body = f"""
# {p["name"]}

A compressed version of {teacher_text}, {"pruned and distilled" if p["distill"] else "pruned"} the Minitron way by
minispec from the spec `{p["spec"]}`.

## Provenance

{chr(10).join(table)}

The spec hash is the sha256 of the resolved spec (`params.yaml`) as canonical JSON; the same spec
and data reproduce this model with `minispec run`. `minispec.json` holds these facts for programs.

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}")  # this directory
tokenizer = AutoTokenizer.from_pretrained("{path}")
inputs = tokenizer("The history of the city begins", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=32)
print(tokenizer.decode(output[0], skip_special_tokens=True))
```

No custom code is needed (`trust_remote_code` stays off).
{_harness_section(p.get("harness") or {})}
## License

Derived from the teacher's weights: the teacher's license and terms apply
({f"`{p['license']}`, as the teacher states" if p.get("license") else "not stated by the teacher; check its terms"}).
"""
    return "\n".join(front) + "\n" + body


def _base_model_missing(teacher: str, note: str | None) -> list[str]:
    """The card's front matter says why it has no ``base_model`` (YAML comments, wrapped)."""
    import textwrap

    why = note or "the teacher records no Hub repository"
    return textwrap.wrap(f"base_model: none: teacher {teacher}: {why}.", 96)


def _base_model_row(base_model: str | None, note: str | None) -> str:
    if base_model:
        return f"`{base_model}`" + (f" ({note})" if note else "")
    return f"none: {note or 'the teacher records no Hub repository'}"


def _distill_text(distill: dict | None) -> str:
    if not distill:
        return "not distilled (the pruned model as is)"
    loss = distill.get("loss", {})
    parts = []
    if "steps" in distill:
        parts.append(f"{int(distill['steps']):,} steps")
    if "tokens" in distill:
        parts.append(f"{int(distill['tokens']):,} tokens")
    if loss:
        parts.append(f"loss `{loss.get('kind')}` at temperature {loss.get('temperature')}")
    return ", ".join(parts) or "distilled"


def _loss_text(distill: dict | None) -> str:
    if not distill or "final_val_loss" not in distill:
        return "not measured by distillation"
    loss = distill["final_val_loss"]
    text = f"{loss:.4f} nats/token (perplexity {math.exp(min(loss, 700)):.2f})"
    if "initial_val_loss" in distill:
        text += f", from {distill['initial_val_loss']:.4f} before distillation"
    return text


def _harness_section(harness: dict) -> str:
    """lm-evaluation-harness scores of this model (the evaluate stage's)."""
    if not harness:
        return ""
    lines = [
        "",
        "## Evaluation (lm-evaluation-harness)",
        "",
        "| task | metric | value |",
        "| --- | --- | ---: |",
    ]
    for task, values in sorted(harness.items()):
        for metric, value in values.items():
            if metric.endswith("_stderr"):
                continue
            stderr = values.get(f"{metric}_stderr")
            shown = f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr else "")
            lines.append(f"| {task} | {metric} | {shown} |")
    return "\n".join(lines) + "\n"


def _model_index(p: dict) -> list[str]:
    """The Hub's ``model-index`` results block for the lm-eval scores."""
    lines = ["model-index:", f"- name: {json.dumps(p['name'])}", "  results:"]
    for task, values in sorted(p["harness"].items()):
        metrics = [(m, v) for m, v in values.items() if not m.endswith("_stderr")]
        if not metrics:
            continue
        lines += [
            "  - task:",
            "      type: text-generation",
            "    dataset:",
            f"      name: {json.dumps(task)}",
            f"      type: {json.dumps(task)}",
            "    metrics:",
        ]
        for metric, value in metrics:
            lines += [f"    - type: {json.dumps(metric)}", f"      value: {value!r}"]
    return lines
