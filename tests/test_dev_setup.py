"""The README's test command sets up a fresh machine by itself: on one without the programs
the suite drives, ``./dev test`` (through ``./dev setup``) asks apt-get for every one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

APT_GET = """#!/bin/sh
# a stand-in apt-get: records what it was asked, and "installs" it as stub programs
echo "$@" >> "{log}"
case "$1" in install)
  for program in redis-server redis-cli chromium node nginx curl; do
    printf '#!/bin/sh\\n' > "{bin}/$program"; chmod +x "{bin}/$program"
  done ;;
esac
"""


def test_dev_setup_installs_every_program_the_suite_needs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "dirname", "id", "chmod", "printf"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    log = tmp_path / "apt.log"
    apt = bin_dir / "apt-get"
    apt.write_text(APT_GET.format(log=log, bin=bin_dir))
    apt.chmod(0o755)
    done = subprocess.run(["/bin/sh", str(ROOT / "dev"), "setup"], capture_output=True,
                          text=True, env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("update")
    requested = set(calls[1].split()[1:])
    # nginx may already be in /usr/sbin here (dev looks there too); the rest never is on PATH
    assert {"redis-server", "chromium", "nodejs", "curl"} <= requested, calls
    if not os.path.exists("/usr/sbin/nginx"):
        assert "nginx" in requested
    again = subprocess.run(["/bin/sh", str(ROOT / "dev"), "setup"], capture_output=True,
                           text=True, env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                           timeout=60)
    assert again.returncode == 0 and len(log.read_text().splitlines()) == 2  # nothing more

