"""Depth pruning: remove whole decoder layers, chosen by the user or by an importance metric.

Layer numbers in the spec, the scores file and the metrics are 1-indexed (NeMo 2's
convention); code works 0-indexed and converts at the edges.

Importance (``target_num_layers``), both measured on calibration windows of the train split:

- ``block_influence`` (ShortGPT; NVIDIA ModelOpt's depth score): per layer
  ``BI = 1 - cos(x_in, x_out)`` of the residual stream entering and leaving the layer, averaged
  over every calibration token; the layers with the lowest BI are dropped.
- ``lm_loss`` (Minitron): the LM loss of the model with each contiguous block of
  ``num_layers - target`` layers removed; the block whose removal gives the lowest loss is
  dropped. Computed in one sweep per batch: the prefix runs once, layer by layer, and the
  state entering layer ``s`` (which is the same whether or not later layers exist) seeds the
  suffix run of candidate block ``[s, s + n)`` — ``(N - n)(N - n + 1)/2`` layer forwards per
  batch instead of ``(N - n + 1)(N - n)``, plus one LM head per candidate. The same sweep yields
  every layer's block influence, so both methods write per-layer scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from minispec.engines.torch.calibration import lm_loss_sum
from minispec.engines.torch.surgery import LAYER_KEY, copy_config, rebuild_model
from minispec.errors import StageError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from transformers import PreTrainedModel


# --------------------------------------------------------------------------------------------
# running a span of decoder layers the way the model's own forward does


def attention_types(config) -> list[str]:
    """Per-layer attention kind ("full_attention" / "sliding_attention"), as the model's forward picks masks.

    Qwen2/Qwen3 list ``layer_types``; Mistral slides every layer when ``sliding_window`` is set;
    Llama is always full.
    """
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    sliding = config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * config.num_hidden_layers


class LayerRunner:
    """Runs chosen decoder layers on hidden states with the model's masks and rotary embeddings.

    ``runner.run(h, range(a, b))`` equals the residual stream after layer ``b - 1`` of a forward
    whose state entering layer ``a`` is ``h`` (tested against the model's own forward).

    The per-layer keyword arguments (attention mask of the layer's kind, rotary embeddings,
    positions, cache positions) are whatever the installed transformers passes: ``context``
    captures them from the model's own forward with every layer swapped for a no-op. Building
    them ourselves would tie us to ``masking_utils``' signature, which changed between 4.56
    (``input_embeds``, ``cache_position``) and 5.x (``inputs_embeds``, ``cache``).
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.layers = model.model.layers
        self.types = attention_types(model.config)

    def context(self, hidden: torch.Tensor) -> list[dict]:
        """Each layer's call arguments for hidden states [b, T, H] at positions 0..T-1."""
        captured: list[dict | None] = [None] * len(self.layers)

        def capture(index):
            def forward(hidden_states, *args, **kwargs):
                if args:
                    raise StageError(
                        "the decoder layer was called with positional arguments; "
                        "this transformers version is not supported for depth scoring"
                    )
                captured[index] = kwargs
                return hidden_states  # a no-op layer: only the arguments matter here

            return forward

        for index, layer in enumerate(self.layers):
            layer.forward = capture(index)  # instance attribute: shadows the class's forward
        try:
            self.model.model(inputs_embeds=hidden, use_cache=False)
        finally:
            for layer in self.layers:
                del layer.forward
        missing = [i for i, kwargs in enumerate(captured) if kwargs is None]
        if missing:
            raise StageError(f"the model's forward did not call decoder layers {missing}")
        return captured

    def layer(self, index: int, hidden: torch.Tensor, context: list[dict]) -> torch.Tensor:
        output = self.layers[index](hidden, **context[index])
        # transformers >= 4.56 returns the hidden states; earlier layers returned a tuple
        return output[0] if isinstance(output, tuple) else output

    def run(
        self, hidden: torch.Tensor, indices: Iterable[int], context: list[dict]
    ) -> torch.Tensor:
        for index in indices:
            hidden = self.layer(index, hidden, context)
        return hidden


# --------------------------------------------------------------------------------------------
# scoring


@dataclass
class DepthScores:
    """Calibration statistics of every layer and (for lm_loss) every contiguous block."""

    num_layers: int
    block_length: int
    tokens: int = 0
    block_influence: list[float] = field(default_factory=list)  # per layer, 0-indexed
    block_loss: list[float] | None = None  # per start layer s (0-indexed): loss without [s, s+n)
    full_loss: float = 0.0  # the unpruned model's loss on the same tokens


def score_layers(
    model: PreTrainedModel,
    batches: Iterable[torch.Tensor],
    block_length: int,
    *,
    block_losses: bool,
) -> DepthScores:
    """Per-layer block influence and, with ``block_losses``, the loss of every contiguous block removal.

    ``batches`` are ``[b, T + 1]`` token windows.
    """
    import torch
    import torch.nn.functional as F

    runner = LayerRunner(model)
    n_layers = len(runner.layers)
    n_blocks = n_layers - block_length + 1
    influence = torch.zeros(n_layers, dtype=torch.float64)
    block_sums = [0.0] * n_blocks
    full_sum, tokens = 0.0, 0
    norm = model.model.norm
    with torch.no_grad():
        for batch in batches:
            inputs, labels = batch[:, :-1], batch[:, 1:]  # [b, T] each
            hidden = model.model.embed_tokens(inputs)  # [b, T, H]: the state entering layer 0
            context = runner.context(hidden)
            for start in range(n_layers + 1):
                # `hidden` is now the state entering layer `start`
                if block_losses and start < n_blocks:
                    suffix = runner.run(hidden, range(start + block_length, n_layers), context)
                    block_sums[start] += lm_loss_sum(model, norm(suffix), labels)
                if start == n_layers:
                    break
                output = runner.layer(start, hidden, context)
                cosine = F.cosine_similarity(hidden.float(), output.float(), dim=-1)  # [b, T]
                influence[start] += (1.0 - cosine).double().sum().item()
                hidden = output
            full_sum += lm_loss_sum(model, norm(hidden), labels)
            tokens += labels.numel()
    if tokens == 0:
        raise StageError("depth scoring got no calibration tokens")
    return DepthScores(
        num_layers=n_layers,
        block_length=block_length,
        tokens=tokens,
        block_influence=(influence / tokens).tolist(),
        block_loss=[s / tokens for s in block_sums] if block_losses else None,
        full_loss=full_sum / tokens,
    )


def choose_layers(scores: DepthScores, method: str) -> list[int]:
    """0-indexed layers to drop: the best contiguous block (lm_loss) or the lowest-influence layers."""
    n = scores.block_length
    if method == "lm_loss":
        assert scores.block_loss is not None
        start = min(range(len(scores.block_loss)), key=lambda s: scores.block_loss[s])
        return list(range(start, start + n))
    if method == "block_influence":
        order = sorted(range(scores.num_layers), key=lambda i: scores.block_influence[i])
        return sorted(order[:n])
    raise ValueError(f"unknown depth importance '{method}'")


def scores_report(
    scores: DepthScores, method: str, dropped: list[int], calibration_samples: int
) -> dict:
    """The JSON written to ``layout.depth_scores_path`` (format there); layer numbers 1-indexed."""
    report = {
        "metric": method,
        "num_layers": scores.num_layers,
        "target_num_layers": scores.num_layers - scores.block_length,
        "calibration_samples": calibration_samples,
        "calibration_tokens": scores.tokens,
        "full_model_loss": scores.full_loss,
        "dropped_layers": [i + 1 for i in dropped],
        "per_layer": list(scores.block_influence),
    }
    if scores.block_loss is not None:
        # one entry per contiguous block: layers start..end (inclusive) removed, LM loss without them
        report["per_block"] = [
            {"start": start + 1, "end": start + scores.block_length, "score": loss}
            for start, loss in enumerate(scores.block_loss)
        ]
    return report


# --------------------------------------------------------------------------------------------
# surgery


def check_drop_layers(drop_layers: list[int], num_layers: int, where: str) -> list[int]:
    """Validate 1-indexed ``drop_layers`` against the model; returns them 0-indexed and sorted."""
    bad = [layer for layer in drop_layers if not 1 <= layer <= num_layers]
    if bad:
        raise StageError(
            f"{where}: layers {bad} are out of range; the model has {num_layers} layers (1..{num_layers})",
            hint="drop_layers is 1-indexed (NeMo 2's convention)",
        )
    if len(set(drop_layers)) != len(drop_layers):
        raise StageError(f"{where}: a layer is listed twice in {sorted(drop_layers)}")
    if len(drop_layers) >= num_layers:
        raise StageError(
            f"{where}: dropping {len(drop_layers)} of {num_layers} layers leaves none",
            hint="keep at least one layer",
        )
    return sorted(layer - 1 for layer in drop_layers)


def drop_layers(model: PreTrainedModel, dropped: list[int]) -> PreTrainedModel:
    """A new model without the 0-indexed ``dropped`` layers; kept layers are renumbered 0..N'-1.

    The config's ``num_hidden_layers`` and per-layer ``layer_types`` follow; the attention
    modules get their new ``layer_idx`` (the KV-cache slot) because the model is rebuilt from
    the new config.
    """
    n_layers = model.config.num_hidden_layers
    kept = [i for i in range(n_layers) if i not in set(dropped)]
    new_index = {old: new for new, old in enumerate(kept)}

    config = copy_config(model.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [model.config.layer_types[i] for i in kept]

    state_dict = {}
    for key, tensor in model.state_dict().items():
        match = LAYER_KEY.match(key)
        if match is None:  # embeddings, final norm, lm_head
            state_dict[key] = tensor
            continue
        old = int(match.group(1))
        if old in new_index:
            state_dict[f"model.layers.{new_index[old]}.{match.group(2)}"] = tensor
    return rebuild_model(model, config, state_dict)
