"""The ``importance`` stage: Minitron activation importance for width pruning.

One no-grad pass of the working teacher over ``calibration_samples`` windows of the train
split, with forward hooks that reduce activations on the fly (nothing is stored but fp32
running sums of one number per channel):

- **MLP neurons**: the input of ``down_proj`` (``act(gate) * up``), ``[B, T, ffn]``.
- **Attention heads**: the input of ``o_proj`` (every head's attention output, concatenated),
  ``[B, T, heads * head_dim]``.
- **Hidden (embedding) channels**: the output of every RMSNorm on the residual stream —
  ``input_layernorm`` and ``post_attention_layernorm`` of each layer and the final ``norm`` —
  ``[B, T, hidden]``. (Qwen3's ``q_norm``/``k_norm`` act over ``head_dim``, not the stream, and
  are not recorded.)

Aggregation: the Minitron paper (Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation", §2.2) sums activation magnitudes over batch and sequence
and ablates the aggregation along each axis; NVIDIA ModelOpt's ``mcore_minitron`` hooks
implement "mean over the sequence, L2 norm over the batch", which is what is done here: for
each sample ``b`` and channel ``c`` take the mean over tokens of ``|a[b, t, c]|``, then the L2
norm over all calibration samples::

    score[c] = sqrt( sum_b ( mean_t |a[b, t, c]| )^2 )

accumulated as a running sum of squares across batches (so it does not depend on the batch
size). Then, per unit:

- neuron ``i`` of layer ``l``: ``score[i]`` of that layer's ``down_proj`` input;
- head ``h``: the L2 norm of its ``head_dim`` channel scores (ModelOpt's head ranking); a KV
  group (computed when pruning) is the L2 norm of its query heads' scores;
- hidden channel ``c``: the sum over every recorded norm of that norm's ``score[c]`` (ModelOpt
  sums its layer norms the same way; the final norm is included here), one ranking for the
  whole residual stream.

The pass runs the base model only (``model.model``): the LM head's logits are not needed.

Outputs: ``layout.width_importance_path()`` (safetensors, keys as ``layout`` documents them:
``mlp.<l>`` ``[ffn]``, ``attention.<l>`` ``[heads*head_dim]`` channel scores, ``heads.<l>`` ``[heads]``,
``norm.<name>`` ``[hidden]`` per norm, ``hidden`` ``[hidden]``; metadata with the model's shapes
and the calibration settings) and ``layout.width_importance_summary_path()`` (JSON).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from minispec import layout
from minispec.engines.torch import modeling
from minispec.engines.torch.calibration import calibration_set, iter_batches
from minispec.engines.torch.surgery import model_dims
from minispec.errors import StageError
from minispec.fsio import atomic_file, write_json_atomic
from minispec.shapes import ModelShapes

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

FORMAT_VERSION = "2"  # 2: MLP scores under layout.WIDTH_MLP_KEY (mlp.<l>), not ffn.<l>


class ActivationRecorder:
    """Forward hooks that keep, per recorded tensor, ``sum_b (mean_t |a[b, t, :]|)^2`` in fp32."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.sums: dict[str, torch.Tensor] = {}
        self.samples = 0
        self._handles = []
        for index, layer in enumerate(model.model.layers):
            self._on_input(layout.WIDTH_MLP_KEY.format(layer=index), layer.mlp.down_proj)
            self._on_input(f"attention.{index}", layer.self_attn.o_proj)
            self._on_output(f"norm.layers.{index}.input_layernorm", layer.input_layernorm)
            self._on_output(
                f"norm.layers.{index}.post_attention_layernorm", layer.post_attention_layernorm
            )
        self._on_output("norm.norm", model.model.norm)

    def _on_input(self, key: str, module) -> None:
        self._handles.append(
            module.register_forward_pre_hook(lambda _m, args: self._accumulate(key, args[0]))
        )

    def _on_output(self, key: str, module) -> None:
        self._handles.append(
            module.register_forward_hook(lambda _m, _args, output: self._accumulate(key, output))
        )

    def _accumulate(self, key: str, activation: torch.Tensor) -> None:
        import torch

        # activation [B, T, C]: L1 over tokens in fp32 without materialising |a|, / T -> [B, C]
        per_sample = torch.linalg.vector_norm(activation, ord=1, dim=1, dtype=torch.float32)
        per_sample.div_(activation.shape[1]).square_()
        total = per_sample.sum(dim=0)  # [C]: sum over the batch of squared token means
        if key in self.sums:
            self.sums[key].add_(total)
        else:
            self.sums[key] = total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, batches: Iterable[torch.Tensor]) -> None:
        """Forward every ``[b, T + 1]`` batch (the model reads the first T tokens)."""
        import torch

        with torch.no_grad():
            for batch in batches:
                self.model.model(input_ids=batch[:, :-1], use_cache=False)
                self.samples += batch.shape[0]

    def scores(self, dims: ModelShapes) -> dict[str, torch.Tensor]:
        """Final per-unit importances (see the module docstring), on the CPU."""
        out = {key: total.sqrt().cpu() for key, total in self.sums.items()}
        for index in range(dims.num_layers):
            channels = out[f"attention.{index}"].view(dims.num_attention_heads, dims.head_dim)
            out[layout.WIDTH_HEADS_KEY.format(layer=index)] = channels.norm(dim=1)  # [heads]
        out[layout.WIDTH_HIDDEN_KEY] = sum(
            value for key, value in out.items() if key.startswith("norm.")
        )
        return out


def collect_importance(
    model: PreTrainedModel, batches: Iterable[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], int]:
    """Run the calibration pass; returns the score tensors and the number of sequences seen."""
    recorder = ActivationRecorder(model)
    try:
        recorder.run(batches)
    finally:
        recorder.remove()
    if recorder.samples == 0:
        raise StageError("the importance pass got no calibration sequences")
    return recorder.scores(model_dims(model.config)), recorder.samples


def save_importance(
    path: Path, scores: dict[str, torch.Tensor], dims: ModelShapes, meta: dict
) -> None:
    from safetensors.torch import save

    metadata = {
        "format_version": FORMAT_VERSION,
        **{k: str(v) for k, v in {**dims.as_dict(), **meta}.items()},
    }
    data = save({k: v.contiguous() for k, v in sorted(scores.items())}, metadata=metadata)
    with atomic_file(path) as tmp:
        tmp.write_bytes(sorted_metadata(data))


def sorted_metadata(data: bytes) -> bytes:
    """The safetensors file ``data`` with its ``__metadata__`` keys in sorted order.

    safetensors writes the metadata in the order of a Rust HashMap, which changes from process to
    process, so the same scores made files with other bytes: another DVC hash, and every stage
    after importance ran again for nothing. The header keeps its length (the same keys and
    values, compact JSON, space padding as safetensors pads), so the data offsets stay valid.
    """
    import json
    import struct

    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:  # not compact JSON as expected: keep safetensors' own bytes
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def load_importance(
    path: Path,
    dims: ModelShapes,
    *,
    calibration_samples: int | None = None,
    seq_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Read the importance file; check it was computed for a model of these shapes and, when
    given, on at least ``calibration_samples`` windows of ``seq_length`` tokens."""
    from safetensors import safe_open

    if not path.exists():
        raise StageError(
            f"{path} not found",
            hint="run the importance stage first (activation importance needs it)",
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if metadata.get("format_version") != FORMAT_VERSION:
        raise StageError(
            f"{path} is in importance format {metadata.get('format_version')!r}, and this "
            f"minispec reads format {FORMAT_VERSION}",
            hint="recompute it: minispec run SPEC --stage importance --force",
        )
    expected = {k: str(v) for k, v in dims.as_dict().items() if k != "tied_embeddings"}
    found = {k: metadata.get(k) for k in expected}
    if found != expected:
        raise StageError(
            f"{path} was computed for a model with {found}, but the teacher has {expected}",
            hint="rerun the importance stage on the current teacher (dvc repro importance)",
        )
    stale = []
    if seq_length is not None and metadata.get("seq_length") != str(seq_length):
        stale.append(f"windows of {metadata.get('seq_length')} tokens, not {seq_length}")
    if (
        calibration_samples is not None
        and int(metadata.get("calibration_samples", 0)) < calibration_samples
    ):
        stale.append(
            f"{metadata.get('calibration_samples')} sequences, fewer than the {calibration_samples} asked for"
        )
    if stale:
        raise StageError(
            f"{path} is stale: it was computed on {' and '.join(stale)}",
            hint="rerun the importance stage (dvc repro importance)",
        )
    return tensors


def importance_calibration_samples(spec) -> tuple[int, str]:
    """Sequences for the pass: the most any activation-importance width variant asks for,
    and the spec key that asks for it (for error messages)."""
    variants = spec.width_variants
    searches = getattr(spec, "search_variants", {})  # a search scores activations too
    if not variants and not searches:
        raise StageError(
            "the spec has no width prune variant, so there is nothing to compute importance for"
        )
    activation = {k: v for k, v in variants.items() if v.importance == "activation"} or variants
    activation = {**activation, **searches}
    name = max(activation, key=lambda k: activation[k].calibration_samples)
    return activation[name].calibration_samples, f"prune.{name}.calibration_samples"


def summary(scores: dict[str, torch.Tensor], dims: ModelShapes, meta: dict) -> dict:
    def stats(tensor):
        return {
            "min": float(tensor.min()),
            "mean": float(tensor.mean()),
            "max": float(tensor.max()),
        }

    return {
        **meta,
        "model": dims.as_dict(),
        "aggregation": "per sample mean over tokens of |activation|, L2 over samples; heads: L2 over head_dim; hidden: sum over norms",
        "hidden": stats(scores["hidden"]),
        "layers": [
            {
                "layer": i + 1,
                "ffn": stats(scores[layout.WIDTH_MLP_KEY.format(layer=i)]),
                "heads": [round(float(h), 6) for h in scores[f"heads.{i}"]],
            }
            for i in range(dims.num_layers)
        ],
    }


def run(spec, variant: str | None, root: Path) -> None:
    """Stage ``importance``: calibration pass of the working teacher → activation importances."""
    from transformers import AutoConfig

    teacher = root / layout.working_teacher_dir(spec)
    if not (teacher / "config.json").exists():
        raise StageError(
            f"{teacher}: no model there", hint="run the import (and finetune) stages first"
        )
    modeling.check_supported(AutoConfig.from_pretrained(teacher), str(teacher))
    count, key = importance_calibration_samples(spec)
    seq_length = spec.data.seq_length
    windows, indices = calibration_set(root, seq_length, count, spec.seed, key)

    device = modeling.resolve_device(spec.resources.accelerator)
    model = modeling.load_model(
        teacher, dtype=modeling.resolve_dtype(spec.teacher.dtype, device), device=device
    )
    dims = model_dims(model.config)
    started = time.perf_counter()
    scores, samples = collect_importance(model, iter_batches(windows, indices, device))
    seconds = time.perf_counter() - started
    meta = {"calibration_samples": samples, "seq_length": seq_length, "seed": spec.seed}
    save_importance(root / layout.width_importance_path(), scores, dims, meta)
    # no timings in the output: the same scores must hash the same, or every width variant
    # after a rerun would run again for nothing; the speed goes to the stage log
    write_json_atomic(root / layout.width_importance_summary_path(), summary(scores, dims, meta))
    print(
        f"importance: {samples} sequences x {seq_length} tokens in {seconds:.1f} s "
        f"({samples * seq_length / seconds:,.0f} tokens/s)"
    )
