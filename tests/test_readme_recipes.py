"""The README's recipe catalogue lists exactly the recipes under recipes/ (overlays aside)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _expand(pattern: str) -> list[str]:
    """Expand one brace group: ``a/{x,y}.yaml`` -> ``a/x.yaml``, ``a/y.yaml``."""
    match = re.search(r"\{([^}]*)\}", pattern)
    if match is None:
        return [pattern]
    return [pattern[: match.start()] + part + pattern[match.end() :] for part in match.group(1).split(",")]


def test_readme_lists_every_recipe() -> None:
    table = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `recipes/")]
    listed = {path for line in table for path in _expand(line.split("`")[1])}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml") if "overlays" not in p.parts}
    assert listed == on_disk, f"README catalogue out of sync: missing {on_disk - listed}, stale {listed - on_disk}"
