"""The report's building block: a heading, a paragraph, a table, a figure or a list, rendered
by :mod:`minispec.report.document` as Markdown and HTML. Its own module so that sections
written elsewhere (the search's, :mod:`minispec.search.report`) build blocks without importing
the document."""

from __future__ import annotations

from dataclasses import dataclass

from minispec.report.plots import FigureInfo


@dataclass
class Block:
    kind: str  # h1 | h2 | h3 | p | table | figure | list
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    figure: FigureInfo | None = None
    items: tuple[str, ...] = ()
