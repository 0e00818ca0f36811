"""The report's "Architecture search" section: every candidate of each search variant, with its
parameters, its loss right after pruning and, for the kept ones, after the short distillation.

Reads ``metrics/prune-<v>.json`` and its info file (written by the ranking stage,
``minispec.search.stages``), so it needs nothing the report stage does not already depend on.
"""

from __future__ import annotations

from typing import Any

HEADER = (
    "candidate",
    "layers",
    "hidden",
    "MLP",
    "heads / groups",
    "parameters",
    "non-embedding",
    "loss after pruning",
    "rank",
    "loss after short KD",
    "rank after KD",
)


def search_blocks(data) -> list:
    from minispec.fsio import merge_records
    from minispec.report.blocks import Block

    blocks = []
    stage_info = getattr(data, "stage_info", {})
    for stage in sorted(set(data.stage_metrics) | set(stage_info)):
        # the ranking stage's record: its numbers and, beside them, the candidate list
        metrics = merge_records(data.stage_metrics.get(stage, {}), stage_info.get(stage, {}))
        if not stage.startswith("prune-") or metrics.get("kind") != "search":
            continue
        search = metrics.get("search") or {}
        variant = stage.removeprefix("prune-")
        if not blocks:
            blocks.append(Block("h2", "Architecture search"))
        blocks.append(Block("h3", f"Search {variant}"))
        blocks.append(Block("p", summary(variant, metrics, search)))
        rows = tuple(row(c, metrics.get("winner")) for c in search.get("candidates", []))
        blocks.append(Block("table", header=HEADER, rows=rows))
    return blocks


def summary(variant: str, metrics: dict, search: dict) -> str:
    budget = search.get("budget", {})
    kind = "parameters" if budget.get("kind") == "params_total" else "non-embedding parameters"
    text = (
        f"Budget {budget.get('target', 0):,} {kind} (at most {budget.get('tolerance', 0):.0%} below). "
        f"{len(search.get('candidates', []))} candidates scored right after pruning; the best "
        f"{search.get('top_k')} distilled for {search.get('short_distill_tokens', 0):,} tokens each; "
        f"**{metrics.get('winner')}** won and became variant {variant}. "
    )
    if metrics.get("ranking_changed"):
        text += "The short distillation changed the winner: the loss right after pruning mispredicted it."
    elif metrics.get("order_changed"):
        text += "The short distillation kept the winner but reordered the other kept candidates."
    else:
        text += "The short distillation kept the order of the loss right after pruning."
    return text + f" Losses are on the first {metrics.get('val_windows')} validation windows."


def row(candidate: dict[str, Any], winner: str | None) -> tuple[str, ...]:
    def loss(key: str) -> str:
        value = candidate.get(key)
        return f"{value:.4f}" if isinstance(value, (int, float)) else "–"

    name = candidate.get("id", "?")
    return (
        f"**{name}**" if name == winner else name,
        str(candidate.get("num_layers")),
        str(candidate.get("hidden_size")),
        str(candidate.get("ffn_hidden_size")),
        f"{candidate.get('num_attention_heads')} / {candidate.get('num_query_groups')}",
        f"{candidate.get('params_total', 0) / 1e6:.3f} M",
        f"{candidate.get('params_non_embedding', 0) / 1e6:.3f} M",
        loss("val_loss_pruned"),
        str(candidate.get("rank_pruned", "–")),
        loss("val_loss_short_distill"),
        str(candidate.get("rank_short_distill", "–")),
    )
