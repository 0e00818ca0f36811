"""`dvc plots show` offline: the page of a real run carries Vega inline and loads nothing.

DVC's default page template loads Vega from a CDN; `minispec run` gives the DVC project its
own template (minispec/vendor/vega/dvc-plots.html, :mod:`minispec.offline_plots`). These tests
render the session's real run with real DVC and, where node is installed, draw every plot of
the page with the inlined Vega itself, with no network.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import pytest
from real_pipeline import dvc

from minispec import offline_plots
from minispec.offline_plots import INSTALLED_NAME, TEMPLATE, configured_template

INLINE = re.compile(
    r'<script data-library="(?P<lib>[\w-]+)@(?P<version>[\d.]+)">\n(?P<code>.*?)\n    </script>',
    re.S,
)
SPEC = re.compile(r"var spec = (?P<spec>\{.*?\});\s*vegaEmbed\('#(?P<id>[^']+)', spec\);", re.S)
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.I)


def test_the_template_inlines_the_npm_builds_recorded_in_the_vendor_readme():
    """Each inlined library is its npm file byte for byte (less the source-map line): its
    SHA-256 is the one README.md records beside the licences."""
    readme = (TEMPLATE.parent / "README.md").read_text(encoding="utf-8")
    licences = (TEMPLATE.parent / "LICENSES.txt").read_text(encoding="utf-8")
    page = TEMPLATE.read_text(encoding="utf-8")
    inlined = {m["lib"]: m for m in INLINE.finditer(page)}
    assert sorted(inlined) == ["vega", "vega-embed", "vega-lite"]
    for lib, match in inlined.items():
        file = {
            "vega": "vega.min.js",
            "vega-lite": "vega-lite.min.js",
            "vega-embed": "vega-embed.min.js",
        }[lib]
        original = f"{match['code']}\n//# sourceMappingURL={file}.map\n".encode()
        row = next(line for line in readme.splitlines() if line.startswith(f"| {lib} |"))
        assert f"| {match['version']} |" in row
        assert f"`{hashlib.sha256(original).hexdigest()}`" in row, lib
        assert f"npm package {lib} " in licences or lib == "vega"
    assert "npm package vega-view " in licences and "BSD-3-Clause" in licences
    assert "{plot_divs}" in page and "{scripts}" not in page and not REMOTE_SCRIPT.search(page)


def test_the_template_is_installed_once_and_a_users_own_is_kept(tmp_path):
    """The config DVC reads names the template; a template the user set is left alone."""
    dvc_dir = tmp_path / ".dvc"
    dvc_dir.mkdir()
    (dvc_dir / "config").write_text("[core]\n    no_scm = True\n")
    said = []
    offline_plots.ensure_offline_plots(tmp_path, said.append)
    assert configured_template(dvc_dir) == INSTALLED_NAME and len(said) == 1
    assert (dvc_dir / INSTALLED_NAME).read_bytes() == TEMPLATE.read_bytes()
    offline_plots.ensure_offline_plots(tmp_path, said.append)  # nothing to do, nothing said
    assert len(said) == 1 and (dvc_dir / "config").read_text().count("html_template") == 1
    # DVC itself reads the value (and keeps its other settings)
    for key, value in (("plots.html_template", INSTALLED_NAME), ("core.no_scm", "True")):
        shown = dvc(tmp_path, "config", key).stdout.strip()
        assert shown == value, (key, shown)
    # a [plots] section without the key gets it; the user's own template stays
    (dvc_dir / "config").write_text("[plots]\n    auto_open = true\n")
    offline_plots.ensure_offline_plots(tmp_path, said.append)
    assert dvc(tmp_path, "config", "plots.html_template").stdout.strip() == INSTALLED_NAME
    (dvc_dir / "config").write_text("[plots]\n    html_template = mine.html\n")
    (dvc_dir / INSTALLED_NAME).unlink()
    offline_plots.ensure_offline_plots(tmp_path, said.append)
    assert configured_template(dvc_dir) == "mine.html" and not (dvc_dir / INSTALLED_NAME).exists()


@pytest.mark.slow
def test_dvc_plots_show_of_a_real_run_needs_no_network(run_dir, tmp_path):
    assert configured_template(run_dir / ".dvc") == INSTALLED_NAME  # set by `minispec run`
    assert (run_dir / ".dvc" / INSTALLED_NAME).read_bytes() == TEMPLATE.read_bytes()
    out = tmp_path / "plots"
    dvc(run_dir, "plots", "show", "-o", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not REMOTE_SCRIPT.search(page) and "cdn.jsdelivr.net" not in page
    assert sorted(m["lib"] for m in INLINE.finditer(page)) == ["vega", "vega-embed", "vega-lite"]
    specs = [json.loads(m["spec"]) for m in SPEC.finditer(page)]
    assert len(specs) >= 6 and all(spec.get("data", {}).get("values") for spec in specs)
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the page's plots were not drawn")
    svgs = draw_with_node(page, specs, tmp_path)
    assert len(svgs) == len(specs)
    for spec, svg in zip(specs, svgs, strict=True):
        # the data marks (lines, points or bars) hold drawn shapes, not only empty groups
        drawn = [m["inner"] for m in DATA_MARKS.finditer(svg) if DRAWN.search(m["inner"])]
        assert svg.startswith("<svg") and drawn, spec.get("title")


DRAWN = re.compile(r'<path[^>]*\sd="M[\d.-]')  # a shape with coordinates
DATA_MARKS = re.compile(
    r'class="mark-(line|symbol|rect) role-mark[^"]*"[^>]*>(?P<inner>.*?)</g>', re.S
)


DRAW = """
const fs = require('fs');
const vega = require('vega');
const vegaLite = require('vega-lite');  // its build requires 'vega' itself
const specs = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
(async () => {
  const svgs = [];
  for (const spec of specs) {
    const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {renderer: 'none'});
    svgs.push(await view.toSVG());
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(svgs));
})().catch((error) => { console.error(error); process.exit(1); });
"""


def draw_with_node(page: str, specs: list[dict], tmp_path) -> list[str]:
    """Every spec drawn to SVG by the Vega and Vega-Lite code the page carries (node, offline)."""
    for match in INLINE.finditer(page):  # as node modules, so that require('vega') finds it
        module = tmp_path / "node_modules" / match["lib"]
        module.mkdir(parents=True)
        (module / "index.js").write_text(match["code"], encoding="utf-8")
    (tmp_path / "specs.json").write_text(json.dumps(specs), encoding="utf-8")
    (tmp_path / "draw.js").write_text(DRAW, encoding="utf-8")
    done = subprocess.run(
        ["node", "draw.js", "specs.json", "svgs.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "svgs.json").read_text(encoding="utf-8"))


def test_this_repositorys_dvc_config_points_at_the_packaged_template():
    """Plain `dvc plots show` at the repository's root (the quickstart's dvc.yaml) draws offline."""
    root = TEMPLATE.parents[3]
    configured = configured_template(root / ".dvc")
    assert configured is not None and (root / ".dvc" / configured).resolve() == TEMPLATE
