"""Reports of a compression run: PNG figures, ``report.md``, a self-contained ``report.html``.

``minispec report [DIR]`` and the pipeline's ``report`` stage (``minispec stage report``) both
call :func:`build_report`. Inputs are read by :mod:`minispec.report.collect`, figures drawn by
:mod:`minispec.report.plots`, text rendered by :mod:`minispec.report.document`; the DVC
``plots:`` definitions of the same curves come from :mod:`minispec.report.dvcplots`.
"""

from __future__ import annotations

from minispec.report.build import build_report, run_stage
from minispec.report.dvcplots import dvc_plots

__all__ = ["build_report", "dvc_plots", "run_stage"]
