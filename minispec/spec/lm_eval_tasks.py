"""The lm-evaluation-harness task names a directory of task YAML files defines.

Engine-neutral and light (no lm-eval import): lint checks ``evaluate.harness.tasks`` against
``include_path`` with it, and the torch engine's harness decides from it whether a run needs
lm-eval's own registry.
"""

from __future__ import annotations

from pathlib import Path


def local_task_names(include_path: Path) -> set[str]:
    """The ``task:`` (and ``group:``) names the YAML files under ``include_path`` define."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    names: set[str] = set()
    for path in sorted(include_path.rglob("*.yaml")):
        try:
            document = yaml.load(path.read_text(encoding="utf-8"))
        except Exception:  # lm-eval's own !function tags: its loader reads these files itself
            continue
        if isinstance(document, dict):
            for key in ("task", "group"):
                if isinstance(document.get(key), str):
                    names.add(document[key])
    return names
