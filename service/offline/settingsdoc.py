"""The settings tables of README.md and docs/ACCURACY.md, written from the settings' own
definitions (``service.settings``): ``python -m service.offline.settingsdoc`` refreshes them and
tests/test_readme.py fails when they drift."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

from service.settings import ENV_PREFIX, SECTIONS, Settings

MODEL_PARAMETERS = ("query_items", "sample_sessions", "neighbours", "neighbour_half_life",
                    "position_decay",
                    "sequence_weight", "before_weight", "idf_weight", "repeat_weight",
                    "order_score", "order_idf", "order_sessions", "order_session_weight",
                    "order_last", "order_age", "order_sequence", "order_seen",
                    "index_cap", "history_cap", "trend_half_life")
"""The settings that shape the model (docs/ACCURACY.md lists them)."""


def markdown_table(names: Sequence[str] | None = None) -> str:
    """Every setting (by section, a row naming each) or the ``names`` given, in order."""
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    by_name = {f.name: f for f in fields(Settings)}
    groups = [(section, list(members)) for section, members in SECTIONS.items()] \
        if names is None else [("", list(names))]
    for section, members in groups:
        if section:
            rows.append(f"| **{section}** | | | |")
        for name in members:
            f = by_name[name]
            flag = "--" + f.name.replace("_", "-")
            rows.append(f"| `{flag}` | `{ENV_PREFIX}{f.name.upper()}` | `{f.default}` | "
                        f"{f.metadata['doc']} |")
    return "\n".join(rows)


def update_tables(readme: str, accuracy: str) -> None:
    """Replace the settings tables in the README and docs/ACCURACY.md with current ones."""
    for path, names in ((readme, None), (accuracy, MODEL_PARAMETERS)):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        start = text.index("| setting | env | default | meaning |")
        end = text.index("\n\n", start)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text[:start] + markdown_table(names) + text[end:])


if __name__ == "__main__":
    # python -m service.offline.settingsdoc: refresh the tables in README.md and docs/ACCURACY.md
    update_tables("README.md", "docs/ACCURACY.md")
