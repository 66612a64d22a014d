"""README's code map lists every library module, and nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_map_rows() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+\.py)` \|", section, flags=re.M))


def test_code_map_matches_the_modules_on_disk():
    listed = _code_map_rows()
    on_disk = {p.relative_to(ROOT).as_posix() for folder in ("models", "utils")
               for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    on_disk |= {p.name for p in ROOT.glob("*.py")}
    assert listed, "README.md has no code map rows"
    assert on_disk - listed == set(), f"modules missing from README's code map: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"README's code map lists modules that do not exist: {sorted(listed - on_disk)}"
