"""Build ``dvc-plots.html``, the offline page template of ``dvc plots show``, from the npm builds.

DVC's Vega renderer puts ``<script src="https://cdn.jsdelivr.net/npm/vega...">`` tags into the
``{scripts}`` slot of its page: offline the page stays blank. This template has no ``{scripts}``
slot; it carries the three libraries inline instead (DVC fills ``{plot_divs}`` with
``vegaEmbed(...)`` calls and ``{refresh_tag}``). Regenerate after updating the packages:

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0   # then untar each into DIR/<name>
    python minispec/vendor/vega/build_template.py DIR

Files are inlined byte for byte but for their last ``//# sourceMappingURL=`` line (the maps are
not shipped); README.md records the versions and SHA-256 of the npm files.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARIES = (  # (package, version, file in the npm package): DVC's vega-lite v5 specs need these majors
    ("vega", "5.33.1", "build/vega.min.js"),
    ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0", "build/vega-embed.min.js"),
)
DVC_SLOTS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- The page template of `dvc plots show` for minispec pipelines: Vega, Vega-Lite and
         Vega-Embed inline (BSD-3-Clause; LICENSES.txt beside this file in minispec/vendor/vega),
         so the page draws its plots offline. DVC's own template loads them from a CDN. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def inline(name: str, version: str, code: str) -> str:
    lines = code.rstrip("\n").split("\n")
    if lines[-1].startswith("//# sourceMappingURL="):
        lines.pop()
    body = "\n".join(lines)
    # the code must neither close its <script> element nor look like one of DVC's slots
    if "</script" in body.lower() or any(slot in body for slot in DVC_SLOTS):
        raise SystemExit(f"{name} {version}: cannot be inlined as is")
    return f'    <script data-library="{name}@{version}">\n{body}\n    </script>'


def build(npm_dir: Path) -> str:
    scripts = []
    for name, version, rel in LIBRARIES:
        path = npm_dir / name / "package" / rel
        data = path.read_bytes()
        print(
            f"{name}@{version} {rel}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
        )
        scripts.append(inline(name, version, data.decode("utf-8")))
    return PAGE.format(scripts="\n".join(scripts))


if __name__ == "__main__":
    (HERE / "dvc-plots.html").write_text(build(Path(sys.argv[1])), encoding="utf-8")
