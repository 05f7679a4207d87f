"""A tuning run's process imports only the installed package, never a module planted in the
working directory of the process that starts it (issue 23, point 6)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from service.settings import Settings
from service.store import tuning
from service.store.state import Store


async def test_a_run_never_imports_code_from_the_working_directory(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``service/cli.py`` planted where the serve process (or a worker) runs: the run it
    starts imports the installed package and runs, the planted file never does."""
    planted = tmp_path / "service"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    ran = tmp_path / "planted-code-ran"
    (planted / "cli.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    store = Store(settings)
    try:
        run_id, started = await tuning.start_run(store.redis, store.scripts, store.keys,
                                                 settings, "admin")
        assert started and run_id is not None
        waited = time.monotonic()
        while json.loads((await store.model_record()).last_run or "{}").get("id") != run_id:
            assert not ran.exists(), "the planted service/cli.py ran"
            assert time.monotonic() - waited < 60, "the run never finished"
            await asyncio.sleep(0.1)
        assert not ran.exists()
    finally:
        await store.close()
