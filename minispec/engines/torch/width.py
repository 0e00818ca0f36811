"""Width pruning: keep the most important MLP neurons, attention heads / KV groups and hidden
channels, and slice every weight accordingly.

Three steps, each a small pure function:

1. **Scores** (:class:`WidthScores`) — one number per unit: per layer every MLP neuron, query
   head and KV group, and one global score per hidden (residual-stream) channel. From the
   importance stage's activations (``activation``, see :mod:`minispec.engines.torch.importance`),
   from weight norms (``magnitude``) or seeded noise (``random``).
2. **Plan** (:class:`WidthPlan`) — the kept indices: each layer keeps its own top
   ``target_ffn_hidden_size`` neurons (same count everywhere); one global set of
   ``target_hidden_size`` channels for the whole residual stream (embeddings, every norm, every
   projection and the LM head must agree, since the stream is added to itself across layers);
   attention keeps the top KV groups, and within each kept group the same number of its own
   query heads, so grouped-query attention stays regular (query head ``h`` reads KV head
   ``h // heads_per_group`` in transformers' ``repeat_kv``, so kept heads are laid out group by
   group). Kept indices are in ascending original order.
3. **Slice** — ``index_select`` along the right dimension of every parameter, a new config
   (``head_dim`` explicit, since ``hidden_size / num_attention_heads`` no longer gives it) and
   a fresh model built from it (:func:`minispec.engines.torch.surgery.rebuild_model`).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

from minispec import layout
from minispec.engines.torch.surgery import (
    LAYER_KEY,
    copy_config,
    model_dims,
    rebuild_model,
)
from minispec.errors import StageError
from minispec.shapes import ModelShapes

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


# --------------------------------------------------------------------------------------------
# targets


@dataclass(frozen=True)
class WidthTargets:
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int


def resolve_targets(
    variant, dims: ModelShapes, where: str, *, allow_same: bool = False
) -> WidthTargets:
    """The full set of target sizes of a width variant, checked against the source model.

    Unset targets keep the source size. With only ``target_num_attention_heads`` set, a model
    with grouped-query attention keeps its KV groups (heads are pruned within them) and a model
    without it (heads == KV heads) stays so. A target may not exceed the source size; one equal
    to it just says "keep" (as NeMo's tutorial passes the teacher's head and group counts), but
    a variant that prunes nothing at all is refused (``allow_same`` accepts it: the library's
    no-op check).
    """

    def check(name: str, target: int | None, source: int) -> int:
        if target is None:
            return source
        if target > source:
            raise StageError(
                f"{where}.{name} is {target}, but the model's size is only {source}: pruning cannot grow a model",
                hint=f"set {name} below {source}, or leave it unset to keep the size",
            )
        return target

    hidden = check("target_hidden_size", variant.target_hidden_size, dims.hidden_size)
    ffn = check("target_ffn_hidden_size", variant.target_ffn_hidden_size, dims.ffn_hidden_size)
    heads = check(
        "target_num_attention_heads", variant.target_num_attention_heads, dims.num_attention_heads
    )
    groups = check(
        "target_num_query_groups", variant.target_num_query_groups, dims.num_query_groups
    )

    mha = dims.num_query_groups == dims.num_attention_heads
    if variant.target_num_query_groups is None and mha:
        groups = heads  # multi-head attention stays multi-head
    if variant.target_num_attention_heads is None and variant.target_num_query_groups is not None:
        heads = groups * dims.heads_per_group  # whole groups go, with their query heads
    if heads % groups:
        raise StageError(
            f"{where}: {heads} attention heads cannot be split evenly over {groups} query groups (KV heads)",
            hint="target_num_attention_heads must be a multiple of target_num_query_groups "
            f"(the model has {dims.num_attention_heads} heads in {dims.num_query_groups} groups)",
        )
    if heads // groups > dims.heads_per_group:
        raise StageError(
            f"{where}: {heads} heads over {groups} groups means {heads // groups} query heads per group, "
            f"but the model's groups have {dims.heads_per_group}",
            hint="pruning removes heads within groups or whole groups; it cannot regroup heads",
        )
    targets = WidthTargets(
        hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads, num_query_groups=groups
    )
    source = (
        dims.hidden_size,
        dims.ffn_hidden_size,
        dims.num_attention_heads,
        dims.num_query_groups,
    )
    if not allow_same and astuple(targets) == source:
        raise StageError(
            f"{where}: every target equals the model's size (hidden {dims.hidden_size}, ffn {dims.ffn_hidden_size}, "
            f"{dims.num_attention_heads} heads, {dims.num_query_groups} query groups): nothing would be pruned",
            hint="set at least one target_* below the model's size",
        )
    return targets


# --------------------------------------------------------------------------------------------
# scores


@dataclass
class WidthScores:
    """One importance value per prunable unit; higher is more important."""

    ffn: list[torch.Tensor]  # per layer [ffn_hidden_size]
    heads: list[torch.Tensor]  # per layer [num_attention_heads]
    groups: list[torch.Tensor]  # per layer [num_query_groups]
    hidden: torch.Tensor  # [hidden_size], one set for the whole residual stream


def group_scores_from_heads(heads: torch.Tensor, num_groups: int) -> torch.Tensor:
    """A KV group's score: the L2 norm of its query heads' scores ([heads] -> [groups])."""
    return heads.view(num_groups, -1).norm(dim=1)


def activation_scores(tensors: dict[str, torch.Tensor], dims: ModelShapes) -> WidthScores:
    """Scores from the importance stage's file (see :mod:`minispec.engines.torch.importance`)."""
    layers = range(dims.num_layers)
    ffn = [tensors[layout.WIDTH_MLP_KEY.format(layer=i)].float() for i in layers]
    heads = [tensors[layout.WIDTH_HEADS_KEY.format(layer=i)].float() for i in layers]
    groups = [group_scores_from_heads(h, dims.num_query_groups) for h in heads]
    hidden = tensors[layout.WIDTH_HIDDEN_KEY].float()
    return WidthScores(ffn=ffn, heads=heads, groups=groups, hidden=hidden)


def magnitude_scores(model: PreTrainedModel) -> WidthScores:
    """Weight-norm scores: the L2 norm of every weight a unit owns.

    A neuron owns its gate/up rows and its down column; a query head its q rows and o columns;
    a KV group its k/v rows plus its query heads; a hidden channel its embedding column (and LM
    head column when untied), the q/k/v/gate/up columns that read it — scaled by the gain of the
    RMSNorm in front of them, which multiplies the channel before they see it — and the o/down
    rows that write it.
    """

    dims = model_dims(model.config)
    hd = dims.head_dim
    sq = lambda w, dim: w.float().pow(2).sum(dim=dim)  # noqa: E731  sum of squares along dim
    ffn, heads, groups = [], [], []
    hidden_sq = sq(model.model.embed_tokens.weight, 0)  # [V, H] -> [H]
    if not dims.tie_embeddings:
        hidden_sq += sq(model.get_output_embeddings().weight, 0)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        in_gain = layer.input_layernorm.weight.float()  # [H]
        mlp_gain = layer.post_attention_layernorm.weight.float()  # [H]
        # MLP: gate/up [F, H], down [H, F]
        ffn.append(
            (
                sq(mlp.gate_proj.weight, 1)
                + sq(mlp.up_proj.weight, 1)
                + sq(mlp.down_proj.weight, 0)
            ).sqrt()
        )
        # attention: q [nH*hd, H], k/v [nKV*hd, H], o [H, nH*hd]
        head_sq = sq(attn.q_proj.weight, 1).view(dims.num_attention_heads, hd).sum(1) + sq(
            attn.o_proj.weight, 0
        ).view(dims.num_attention_heads, hd).sum(1)  # [nH]
        kv_sq = (
            (sq(attn.k_proj.weight, 1) + sq(attn.v_proj.weight, 1))
            .view(dims.num_query_groups, hd)
            .sum(1)
        )  # [nKV]
        heads.append(head_sq.sqrt())
        groups.append((head_sq.view(dims.num_query_groups, -1).sum(1) + kv_sq).sqrt())
        readers_attn = (
            sq(attn.q_proj.weight, 0) + sq(attn.k_proj.weight, 0) + sq(attn.v_proj.weight, 0)
        )  # [H]
        readers_mlp = sq(mlp.gate_proj.weight, 0) + sq(mlp.up_proj.weight, 0)  # [H]
        hidden_sq += readers_attn * in_gain.pow(2) + readers_mlp * mlp_gain.pow(2)
        hidden_sq += sq(attn.o_proj.weight, 1) + sq(
            mlp.down_proj.weight, 1
        )  # writers: [H, *] -> [H]
    # scores live on the host, as activation and random scores do: the plan indexes with them
    # into weights wherever those are (a GPU run failed with a device mismatch before)
    host = lambda scores: [s.float().cpu() for s in scores]  # noqa: E731
    return WidthScores(
        ffn=host(ffn), heads=host(heads), groups=host(groups), hidden=hidden_sq.sqrt().float().cpu()
    )


def random_scores(dims: ModelShapes, seed: int) -> WidthScores:
    """Seeded uniform noise: the baseline every real importance must beat."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.rand(n, generator=generator)  # noqa: E731
    ffn = [rand(dims.ffn_hidden_size) for _ in range(dims.num_layers)]
    heads = [rand(dims.num_attention_heads) for _ in range(dims.num_layers)]
    groups = [rand(dims.num_query_groups) for _ in range(dims.num_layers)]
    return WidthScores(ffn=ffn, heads=heads, groups=groups, hidden=rand(dims.hidden_size))


# --------------------------------------------------------------------------------------------
# plan


@dataclass
class WidthPlan:
    """Kept indices into the source model, ascending (query heads grouped by KV group)."""

    hidden: torch.Tensor  # [kept_hidden]
    ffn: list[torch.Tensor]  # per layer [kept_ffn]
    query_heads: list[torch.Tensor]  # per layer [kept_heads]
    kv_heads: list[torch.Tensor]  # per layer [kept_groups]


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in ascending index order (ties: the lower index)."""
    import torch

    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def plan_width(scores: WidthScores, dims: ModelShapes, targets: WidthTargets) -> WidthPlan:
    import torch

    per_group = targets.num_attention_heads // targets.num_query_groups
    query_heads, kv_heads = [], []
    for layer in range(dims.num_layers):
        groups = top_k_sorted(scores.groups[layer], targets.num_query_groups)
        heads = []
        for group in groups.tolist():
            members = torch.arange(group * dims.heads_per_group, (group + 1) * dims.heads_per_group)
            heads.append(members[top_k_sorted(scores.heads[layer][members], per_group)])
        query_heads.append(torch.cat(heads))
        kv_heads.append(groups)
    return WidthPlan(
        hidden=top_k_sorted(scores.hidden, targets.hidden_size),
        ffn=[top_k_sorted(s, targets.ffn_hidden_size) for s in scores.ffn],
        query_heads=query_heads,
        kv_heads=kv_heads,
    )


# --------------------------------------------------------------------------------------------
# slicing


def head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices of heads in a [heads*head_dim] projection axis."""
    import torch

    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _take(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    return tensor.index_select(dim, index.to(tensor.device)).contiguous()


def slice_layer_param(
    name: str, tensor: torch.Tensor, layer: int, plan: WidthPlan, head_dim: int
) -> torch.Tensor:
    """Slice one parameter of decoder layer ``layer`` (``name`` relative to the layer)."""
    hidden = plan.hidden
    q = head_channels(plan.query_heads[layer], head_dim)
    kv = head_channels(plan.kv_heads[layer], head_dim)
    ffn = plan.ffn[layer]
    if name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        return _take(tensor, 0, hidden)  # [H] -> [kept_H]
    if name in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
        return tensor  # Qwen3's per-head RMSNorm over head_dim: [hd], head_dim is not pruned
    if name == "self_attn.q_proj.weight":
        return _take(_take(tensor, 0, q), 1, hidden)  # [nH*hd, H] -> [kept_nH*hd, kept_H]
    if name == "self_attn.q_proj.bias":
        return _take(tensor, 0, q)  # [nH*hd] -> [kept_nH*hd]
    if name in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
        return _take(_take(tensor, 0, kv), 1, hidden)  # [nKV*hd, H] -> [kept_nKV*hd, kept_H]
    if name in ("self_attn.k_proj.bias", "self_attn.v_proj.bias"):
        return _take(tensor, 0, kv)  # [nKV*hd] -> [kept_nKV*hd]
    if name == "self_attn.o_proj.weight":
        return _take(_take(tensor, 0, hidden), 1, q)  # [H, nH*hd] -> [kept_H, kept_nH*hd]
    if name == "self_attn.o_proj.bias":
        return _take(tensor, 0, hidden)  # [H] -> [kept_H]
    if name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        return _take(_take(tensor, 0, ffn), 1, hidden)  # [F, H] -> [kept_F, kept_H]
    if name in ("mlp.gate_proj.bias", "mlp.up_proj.bias"):
        return _take(tensor, 0, ffn)  # [F] -> [kept_F]
    if name == "mlp.down_proj.weight":
        return _take(_take(tensor, 0, hidden), 1, ffn)  # [H, F] -> [kept_H, kept_F]
    if name == "mlp.down_proj.bias":
        return _take(tensor, 0, hidden)  # [H] -> [kept_H]
    raise StageError(
        f"width pruning does not know the parameter 'model.layers.{layer}.{name}'",
        hint="this architecture variant is not supported",
    )


def slice_state_dict(model: PreTrainedModel, plan: WidthPlan) -> dict[str, torch.Tensor]:
    dims = model_dims(model.config)
    state_dict: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        match = LAYER_KEY.match(key)
        if match is not None:
            state_dict[key] = slice_layer_param(
                match.group(2), tensor, int(match.group(1)), plan, dims.head_dim
            )
        elif key in ("model.embed_tokens.weight", "lm_head.weight"):
            state_dict[key] = _take(tensor, 1, plan.hidden)  # [V, H] -> [V, kept_H]
        elif key == "model.norm.weight":
            state_dict[key] = _take(tensor, 0, plan.hidden)  # [H] -> [kept_H]
        else:
            raise StageError(
                f"width pruning does not know the parameter '{key}'",
                hint="this architecture variant is not supported",
            )
    if dims.tie_embeddings and "lm_head.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]  # tied: one tensor
    return state_dict


def pruned_config(config, targets: WidthTargets, dims: ModelShapes):
    new = copy_config(config)
    new.hidden_size = targets.hidden_size
    new.intermediate_size = targets.ffn_hidden_size
    new.num_attention_heads = targets.num_attention_heads
    new.num_key_value_heads = targets.num_query_groups
    new.head_dim = dims.head_dim  # explicit: hidden_size / num_attention_heads no longer gives it
    return new


def check_pruned_config(config, targets: WidthTargets, where: str) -> None:
    """Refuse targets transformers would refuse when the pruned model is reloaded.

    Configs validate themselves on load: e.g. ``LlamaConfig`` (transformers 5) requires
    ``hidden_size`` to be a multiple of ``num_attention_heads`` even with an explicit
    ``head_dim`` (Qwen2, Qwen3 and Mistral do not). Checked before any model is loaded.
    """
    dims = model_dims(config)
    candidate = pruned_config(config, targets, dims).to_dict()
    try:
        type(config).from_dict(candidate)
    except Exception as exc:  # transformers raises several types; report its own words
        cause = exc.__cause__ or exc
        hint = "choose targets the architecture's config accepts"
        if targets.hidden_size % targets.num_attention_heads:
            heads = targets.num_attention_heads
            lower = targets.hidden_size - targets.hidden_size % heads
            groups = targets.num_query_groups
            options = [  # head counts that keep the groups and divide the hidden size
                groups * per_group
                for per_group in range(1, dims.heads_per_group + 1)
                if targets.hidden_size % (groups * per_group) == 0
            ]
            hint = (
                f"{config.model_type} needs hidden_size to be a multiple of num_attention_heads: set "
                f"target_hidden_size to a multiple of {heads} (e.g. {lower} or {lower + heads})"
            )
            if options:
                hint += f", or target_num_attention_heads to one of {options}"
        raise StageError(
            f"{where}: transformers refuses the pruned config: {cause}", hint=hint
        ) from None


def prune_width(
    model: PreTrainedModel, scores: WidthScores, targets: WidthTargets
) -> tuple[PreTrainedModel, WidthPlan]:
    """A new model keeping the units ``scores`` rank highest at ``targets`` sizes."""
    dims = model_dims(model.config)
    plan = plan_width(scores, dims, targets)
    for layer in range(dims.num_layers):
        assert len(plan.ffn[layer]) == targets.ffn_hidden_size
        assert len(plan.query_heads[layer]) == targets.num_attention_heads
        assert len(plan.kv_heads[layer]) == targets.num_query_groups
    config = pruned_config(model.config, targets, dims)
    new = rebuild_model(model, config, slice_state_dict(model, plan))
    return new, plan
