"""The pre-commit hook's environment is minispec's core dependencies only, and lint needs no more.

`.pre-commit-hooks.yaml` installs minispec with its core dependencies (pyproject's
`dependencies`), this repository's own hook the same list as `additional_dependencies`; both run
`minispec lint`. Measured: that environment is 44 MB, pip and setuptools included
(benchmarks/RESULTS.md, "pre-commit hook environment").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
# the distributions of the core and the modules they bring (import names)
LIGHT_MODULES = {
    "minispec",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions",
    "click",
    "ruamel",
    "jsonschema",
    "jsonschema_specifications",
    "referencing",
    "rpds",
    "attrs",
    "attr",
}
CORE = {"pydantic", "jsonschema", "click", "ruamel.yaml"}

PROBE = """
import json, sys
from minispec.cli import main
sys.argv = ["minispec", "lint", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def requirement_name(text: str) -> str:
    return text.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()


def test_lint_imports_only_the_core_dependencies():
    specs = [str(p) for p in sorted((REPO / "specs").glob("*.yaml"))]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *specs], cwd=REPO, capture_output=True, text=True
    )
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    # interpreter start-up modules (site's hooks, sysconfig data, editable-install finders)
    startup = {m for m in modules if m.startswith(("_", "__"))}
    foreign = sorted(modules - set(sys.stdlib_module_names) - LIGHT_MODULES - startup)
    assert foreign == [], f"lint imported {foreign}: the pre-commit environment lacks them"
    assert "ok" in done.stdout  # and it did lint the specs


def test_core_dependencies_are_the_hooks_environment():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {requirement_name(d) for d in project["dependencies"]} == CORE
    config = YAML(typ="safe", pure=True).load((REPO / ".pre-commit-config.yaml").read_text())
    (hook,) = [h for repo in config["repos"] for h in repo["hooks"] if h["id"] == "minispec-lint"]
    assert sorted(hook["additional_dependencies"]) == sorted(project["dependencies"])
    # the pipeline tools live in extras, the engine's extra brings them
    assert "dvc>=3.50" in project["optional-dependencies"]["pipeline"]
    assert "minispec[pipeline]" in project["optional-dependencies"]["torch"]
