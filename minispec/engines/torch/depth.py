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
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.layers = model.model.layers
        self.types = attention_types(model.config)

    def context(self, hidden: torch.Tensor) -> dict:
        """Masks per attention kind and rotary embeddings for hidden states [b, T, H] at positions 0..T-1."""
        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # [1, T]
        mask_args = dict(
            config=self.model.config,
            inputs_embeds=hidden,
            attention_mask=None,
            cache=None,
            position_ids=position_ids,
        )
        masks = {"full_attention": create_causal_mask(**mask_args)}
        if "sliding_attention" in self.types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_args)
        return {
            "masks": masks,
            "position_ids": position_ids,
            "position_embeddings": self.model.model.rotary_emb(hidden, position_ids),
        }

    def layer(self, index: int, hidden: torch.Tensor, context: dict) -> torch.Tensor:
        return self.layers[index](
            hidden,
            attention_mask=context["masks"][self.types[index]],
            position_ids=context["position_ids"],
            position_embeddings=context["position_embeddings"],
            use_cache=False,
        )

    def run(self, hidden: torch.Tensor, indices: Iterable[int], context: dict) -> torch.Tensor:
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
    """The JSON written to ``layout.depth_scores_path``; every layer number 1-indexed.

    The keys ``layout`` promises (``metric``, ``num_layers``, ``per_layer``, ``per_block``,
    ``dropped_layers``: what the report draws) come first, then the details of the pass.
    ``per_layer`` holds scores of the metric only: block influence, or for ``lm_loss`` the loss
    without each single layer, which the sweep measures only when one layer is removed.
    """
    report = {
        "metric": method,
        "num_layers": scores.num_layers,
        **layout_scores(scores, method),
        "dropped_layers": [i + 1 for i in dropped],
        "importance": method,
        "target_num_layers": scores.num_layers - scores.block_length,
        "calibration_samples": calibration_samples,
        "calibration_tokens": scores.tokens,
        "full_model_loss": scores.full_loss,
        "drop_layers": [i + 1 for i in dropped],
        "layers": [
            {"layer": i + 1, "block_influence": bi} for i, bi in enumerate(scores.block_influence)
        ],
    }
    if scores.block_loss is not None:
        # one entry per contiguous block: layers first..last (inclusive) removed, LM loss without them
        report["blocks"] = [
            {"first_layer": start + 1, "last_layer": start + scores.block_length, "loss": loss}
            for start, loss in enumerate(scores.block_loss)
        ]
    return report


def layout_scores(scores: DepthScores, method: str) -> dict:
    """``per_layer`` and ``per_block`` in the layout's format (higher = more important)."""
    if method == "block_influence":
        return {"per_layer": list(scores.block_influence)}
    assert scores.block_loss is not None
    out: dict = {
        "per_block": [
            {"start": start + 1, "end": start + scores.block_length, "score": loss}
            for start, loss in enumerate(scores.block_loss)
        ]
    }
    if scores.block_length == 1:  # each block is one layer: its loss is the layer's score
        out["per_layer"] = list(scores.block_loss)
    return out


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
