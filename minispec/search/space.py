"""The candidate architectures of a ``kind: search`` prune variant: a pure function of the
variant's settings and the teacher's shapes.

Lint (from ``config.json`` / GGUF metadata, no weights), the compiler (which only needs
``top_k``, the number of candidate slots) and the ``search@<variant>`` stage (from the working
teacher's config) all call :func:`enumerate_candidates`, so what lint promises is what runs.

A candidate keeps the teacher's ``head_dim`` and query groups (ModelOpt no longer prunes
groups; pruning removes query heads within them), so its heads are a multiple of the groups
with at most the teacher's heads per group; on Llama configs its hidden size is a multiple of
its heads (transformers' LlamaConfig refuses anything else, see ``spec/rules.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from minispec.shapes import LAYOUT_SIZES, ModelShapes

AXES = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")


@dataclass(frozen=True)
class Arch:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int

    def label(self) -> str:
        return (
            f"L{self.num_layers} H{self.hidden_size} F{self.ffn_hidden_size} "
            f"A{self.num_attention_heads}/{self.num_query_groups}"
        )


@dataclass(frozen=True)
class Candidate:
    id: str  # "c01", ...: position in the enumeration (most parameters first)
    arch: Arch
    params_total: int
    params_non_embedding: int

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            **asdict(self.arch),
            "params_total": self.params_total,
            "params_non_embedding": self.params_non_embedding,
        }


def teacher_arch(dims: ModelShapes) -> Arch:
    return Arch(
        dims.num_layers,
        dims.hidden_size,
        dims.ffn_hidden_size,
        dims.num_attention_heads,
        dims.num_query_groups,
    )


def count_params(arch: Arch, dims: ModelShapes) -> tuple[int, int]:
    """(total, non-embedding) parameters of a Llama-style decoder with ``arch``'s sizes.

    Per layer: q ``[heads·hd, H]``, k/v ``[groups·hd, H]``, o ``[H, heads·hd]``, gate/up
    ``[F, H]``, down ``[H, F]``, two RMSNorms ``[H]``; then the final norm ``[H]``, the embedding
    ``[V, H]`` and, when untied, the LM head ``[V, H]`` (tests compare with real models).
    """
    h, hd = arch.hidden_size, dims.head_dim
    q, kv = arch.num_attention_heads * hd, arch.num_query_groups * hd
    attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if dims.qkv_bias else 0)
    mlp = 3 * h * arch.ffn_hidden_size
    non_embedding = arch.num_layers * (attention + mlp + 2 * h) + h
    embedding = dims.vocab_size * h * (1 if dims.tie_embeddings else 2)
    return non_embedding + embedding, non_embedding


# --------------------------------------------------------------------------------------------
# choices per axis


def rounding_unit(size: int) -> int:
    """Width choices are multiples of a power of two near ``size / 32`` (1 to 256): 32 for
    SmolLM2's MLP of 1536, 256 for Llama-3.1-8B's 14336, as ModelOpt's choices for 8B models."""
    unit = 1
    while unit * 2 <= size / 32 and unit < 256:
        unit *= 2
    return unit


def fractions(count: int, max_pruning: float) -> list[float]:
    if count == 1:
        return [1.0]
    return [1.0 - max_pruning * i / (count - 1) for i in range(count)]


def head_choices(dims: ModelShapes, settings) -> list[int]:
    groups = dims.num_query_groups
    if "num_attention_heads" in settings.hparams_to_skip:
        return [dims.num_attention_heads]
    least = math.ceil(dims.num_attention_heads * (1 - settings.max_width_pruning))
    per_group = dims.num_attention_heads // groups
    return [groups * k for k in range(per_group, 0, -1) if groups * k >= max(least, groups)]


def width_choices(size: int, settings, axis: str, unit: int) -> list[int]:
    if axis in settings.hparams_to_skip:
        return [size]
    least = math.ceil(size * (1 - settings.max_width_pruning))
    values = {size}
    for fraction in fractions(settings.width_choices, settings.max_width_pruning):
        value = int(size * fraction) // unit * unit
        if value >= max(least, 1) and value > 0:
            values.add(value)
    return sorted(values, reverse=True)


def layer_choices(dims: ModelShapes, settings) -> list[int]:
    if "num_layers" in settings.hparams_to_skip:
        return [dims.num_layers]
    least = max(1, math.ceil(dims.num_layers * (1 - settings.max_depth_pruning)))
    return list(range(dims.num_layers, least - 1, -settings.depth_step))


def hidden_unit(dims: ModelShapes, heads: list[int]) -> int:
    """Llama needs hidden % heads == 0: round hidden sizes to a multiple of every head choice
    when that unit is small enough to leave choices, else to the plain unit (and filter)."""
    unit = rounding_unit(dims.hidden_size)
    if dims.model_type == "llama":
        joint = math.lcm(unit, *heads)
        if joint <= dims.hidden_size // 4:
            return joint
    return unit


# --------------------------------------------------------------------------------------------
# the enumeration


def budget_value(settings, total: int, non_embedding: int) -> int:
    return total if settings.target_params is not None else non_embedding


def budget(settings) -> int:
    return (
        settings.target_params
        if settings.target_params is not None
        else settings.target_non_embedding_params
    )


def all_architectures(dims: ModelShapes, settings) -> list[Arch]:
    heads = head_choices(dims, settings)
    hiddens = width_choices(dims.hidden_size, settings, "hidden_size", hidden_unit(dims, heads))
    ffns = width_choices(
        dims.ffn_hidden_size, settings, "ffn_hidden_size", rounding_unit(dims.ffn_hidden_size)
    )
    teacher = teacher_arch(dims)
    archs = []
    for layers in layer_choices(dims, settings):
        for hidden in hiddens:
            for ffn in ffns:
                for head in heads:
                    if dims.model_type == "llama" and hidden % head:
                        continue
                    arch = Arch(layers, hidden, ffn, head, dims.num_query_groups)
                    if arch != teacher:
                        archs.append(arch)
    return archs


def enumerate_candidates(dims: ModelShapes, settings) -> list[Candidate]:
    """Architectures whose parameter count is within ``budget_tolerance`` below the budget,
    the largest first (ties by sizes, deeper first), at most ``max_candidates``."""
    target = budget(settings)
    low = target * (1 - settings.budget_tolerance)
    fitting = []
    for arch in all_architectures(dims, settings):
        total, non_embedding = count_params(arch, dims)
        value = budget_value(settings, total, non_embedding)
        if low <= value <= target:
            fitting.append((value, arch, total, non_embedding))
    fitting.sort(key=lambda item: (-item[0], [-x for x in astuple_arch(item[1])]))
    return [
        Candidate(f"c{i + 1:02d}", arch, total, non_embedding)
        for i, (_, arch, total, non_embedding) in enumerate(fitting[: settings.max_candidates])
    ]


def astuple_arch(arch: Arch) -> tuple[int, ...]:
    return (
        arch.num_layers,
        arch.hidden_size,
        arch.ffn_hidden_size,
        arch.num_attention_heads,
        arch.num_query_groups,
    )


def parameter_range(dims: ModelShapes, settings) -> tuple[int, int] | None:
    """Smallest and largest budget value over every architecture the settings allow (for hints)."""
    values = [
        budget_value(settings, *count_params(arch, dims))
        for arch in all_architectures(dims, settings)
    ]
    return (min(values), max(values)) if values else None


# --------------------------------------------------------------------------------------------
# the teacher's dimensions: the one shape model (minispec.shapes), when complete


def dims_from_shapes(shapes: ModelShapes) -> ModelShapes | None:
    """The teacher's shapes (lint's, or a stage's from its config), None when a number the
    count needs is unknown."""
    return None if shapes.unknown(*LAYOUT_SIZES, "tie_word_embeddings") else shapes


def teacher_record(dims: ModelShapes) -> dict:
    """The teacher's sizes as the search's candidates file records them (Megatron's names)."""
    return {
        "model_type": dims.model_type,
        "num_layers": dims.num_layers,
        "hidden_size": dims.hidden_size,
        "ffn_hidden_size": dims.ffn_hidden_size,
        "num_attention_heads": dims.num_attention_heads,
        "num_query_groups": dims.num_query_groups,
        "head_dim": dims.head_dim,
        "vocab_size": dims.vocab_size,
        "tie_word_embeddings": dims.tie_embeddings,
        "qkv_bias": dims.qkv_bias,
    }
