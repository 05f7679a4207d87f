"""The README's configuration table is the settings object's own (they cannot drift)."""

from __future__ import annotations

from pathlib import Path

from service.settings import MODEL_PARAMETERS, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_settings_tables_match_the_settings_object() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text()
    assert markdown_table(MODEL_PARAMETERS) in (ROOT / "docs" / "ACCURACY.md").read_text()


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./dev demo", "./dev test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci
    assert "apt-get" not in ci  # the set-up is the test command's own (./dev need_system)
