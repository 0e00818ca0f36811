"""``dvc plots show`` offline: the DVC project gets minispec's page template (Vega inline).

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN (``dvc_render.vega``), so
without a network the page ``dvc plots show`` writes is blank. DVC reads a page template from
the ``plots.html_template`` config (relative to ``.dvc/``); ``minispec run`` copies
``minispec/vendor/vega/dvc-plots.html`` (the three libraries inline, licences beside it) to
``.dvc/minispec-plots.html`` of the project it runs in and sets the config when it is unset. A
template the user configured is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "vendor" / "vega" / "dvc-plots.html"
INSTALLED_NAME = "minispec-plots.html"  # under .dvc/, where DVC resolves a relative template
# `html_template = VALUE` inside the [plots] section of .dvc/config (DVC writes this INI form)
_SECTION = re.compile(r"^\s*\[plots\]\s*$(?P<body>(?:\n(?!\s*\[).*)*)", re.MULTILINE)
_TEMPLATE_LINE = re.compile(r"^\s*html_template\s*=\s*(?P<value>.+?)\s*$", re.MULTILINE)


def configured_template(dvc_dir: Path) -> str | None:
    """The ``plots.html_template`` of the project's ``.dvc/config``, or None when unset."""
    try:
        text = (dvc_dir / "config").read_text(encoding="utf-8")
    except OSError:
        return None
    section = _SECTION.search(text)
    line = _TEMPLATE_LINE.search(section["body"]) if section else None
    return line["value"].strip("'\"") if line else None


def ensure_offline_plots(dvc_root: Path, echo: Callable[[str], None]) -> None:
    """Install or refresh the offline template in ``dvc_root/.dvc``; set the config if unset."""
    dvc_dir = dvc_root / ".dvc"
    current = configured_template(dvc_dir)
    if current is not None and current != INSTALLED_NAME:
        return  # the user's own template (or this repository's, which points at the package)
    from minispec.fsio import write_text_atomic

    page = TEMPLATE.read_bytes()
    installed = dvc_dir / INSTALLED_NAME
    if not installed.is_file() or installed.read_bytes() != page:
        write_text_atomic(installed, page.decode("utf-8"))
    if current is None:
        # what `dvc config plots.html_template NAME` writes, without starting DVC for it
        write_text_atomic(dvc_dir / "config", with_template(_read(dvc_dir / "config")))
        echo(f"`dvc plots show` pages draw offline: Vega inline (.dvc/{INSTALLED_NAME})")


def with_template(config: str) -> str:
    """``config`` (DVC's INI text) with ``html_template`` set in its ``[plots]`` section."""
    line = f"    html_template = {INSTALLED_NAME}\n"
    section = _SECTION.search(config)
    if section is None:
        return config + ("" if config.endswith("\n") or not config else "\n") + "[plots]\n" + line
    head = section.end() - len(section["body"])  # just after the [plots] header line
    return config[:head] + "\n" + line.rstrip("\n") + config[head:]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
