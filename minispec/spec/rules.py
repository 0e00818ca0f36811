"""Semantic rules of a spec: relations between fields and against the teacher's shapes.

Each rule is a small function ``(loaded, ctx) -> iterable of Problem``; :func:`check` runs them
all so that every problem is reported at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from minispec.errors import Problem
from minispec.spec.load import LoadedSpec
from minispec.spec.model import DepthPrune, WidthPrune


def check(loaded: LoadedSpec) -> list[Problem]:
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(rule(loaded))
    return problems


def depth_variants(loaded: LoadedSpec) -> Iterator[Problem]:
    for name, variant in loaded.spec.prune.items():
        if not isinstance(variant, DepthPrune):
            continue
        base = ("prune", name)
        if (variant.drop_layers is None) == (variant.target_num_layers is None):
            yield loaded.locate(base, "a depth variant needs exactly one of 'drop_layers' and 'target_num_layers'",
                                hint="list the 1-indexed layers to drop, or set target_num_layers")
        if variant.drop_layers is not None:
            seen = set()
            for index, layer in enumerate(variant.drop_layers):
                if layer < 1:
                    yield loaded.locate(base + ("drop_layers", index), f"layer {layer} is not ≥ 1", hint="drop_layers is 1-indexed")
                if layer in seen:
                    yield loaded.locate(base + ("drop_layers", index), f"layer {layer} is listed twice")
                seen.add(layer)


def width_variants(loaded: LoadedSpec) -> Iterator[Problem]:
    for name, variant in loaded.spec.prune.items():
        if not isinstance(variant, WidthPrune):
            continue
        targets = (variant.target_ffn_hidden_size, variant.target_hidden_size,
                   variant.target_num_attention_heads, variant.target_num_query_groups)
        if all(t is None for t in targets):
            yield loaded.locate(("prune", name), "a width variant needs at least one target_* size")


def students(loaded: LoadedSpec) -> Iterator[Problem]:
    spec = loaded.spec
    if spec.distill is None or spec.distill.students is None:
        return
    for index, student in enumerate(spec.distill.students):
        if student not in spec.prune:
            yield loaded.locate(("distill", "students", index), f"'{student}' is not a prune variant",
                                hint=f"prune variants: {', '.join(spec.prune) or 'none'}")


RULES = [depth_variants, width_variants, students]
