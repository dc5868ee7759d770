"""The docs say what the code does: every setting the code reads is in the main
README's configuration table, and the table names no setting the code lacks."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def configuration_table() -> set[str]:
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_setting_is_in_the_readme_s_configuration_table() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    table = configuration_table()
    assert sorted(settings - table) == [], "settings the README's table lacks"
    assert sorted(table - settings) == [], "names in the README's table that are no setting"
