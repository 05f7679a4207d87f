"""The README says what the code does: its configuration table is the settings object's own,
its lines that once misled are held, and every command of its ```sh blocks runs as it says."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.api.pages import api_page
from service.api.routes import ROUTES
from service.offline.redisproc import free_port
from service.offline.settingsdoc import MODEL_PARAMETERS, markdown_table
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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


# --- every command of the README's ```sh blocks, run as a new user would (issue 27) ------------
def sh_blocks() -> list[list[str]]:
    """The README's ```sh blocks, each as its commands (a command may span lines: a quoted
    JSON body), without the comments."""
    blocks = []
    for block in re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.S | re.M):
        commands: list[str] = []
        for line in block.splitlines():
            if commands and commands[-1].count("'") % 2:  # inside a quoted body
                commands[-1] += "\n" + line
            else:
                commands.append(re.sub(r"\s+#.*$", "", line).strip())
        blocks.append([c for c in commands if c])
    return blocks


HELD_TO = {
    "./dev demo": "not run here (it would build a .venv of its own): `sessionrec demo --help` "
                  "exits 0 and says the embedded default, and ./dev's demo case runs "
                  "`sessionrec demo` (tests/test_demo.py runs the demo itself)",
    "./dev test": "not run here (it is this suite): CI's .ci/run runs it "
                  "(test_quick_start_is_two_commands_and_ci_runs_the_test_one)",
    "sessionrec serve": "started on a free port for 8000, on the private Redis: /healthz "
                        "answers 200; SIGTERM ends it with exit code 0",
    "sessionrec worker": "started beside it: it applies the events the curl lines send "
                         "(/stats pending 0); SIGTERM ends it with exit code 0",
    "curl": "run by bash against that server: exit 0, a JSON answer without an error",
    "sessionrec load": "on a generated clicks.tsv.gz, into the private Redis, in a namespace "
                       "of its own (it needs an empty one; serve's has events): exit 0",
    "sessionrec catalog": "on a generated items.jsonl.gz: exit 0",
    "sessionrec eval": "on generated train.tsv and test.tsv, without a URL (a private "
                       "redis-server of its own): exit 0 and report.md written",
    "sessionrec tune --train": "on the generated train.tsv, without a URL: exit 0 and "
                               "tuned.env written",
    "sessionrec tune --apply": "on the state load left: exit 0",
    "sessionrec sequence --apply": "on the state load left: exit 0",
}
"""What each README command is held to here (no Docker, no network, a private Redis)."""


def kind(command: str) -> str:
    for prefix in sorted(HELD_TO, key=len, reverse=True):
        if command.startswith(prefix):
            return prefix
    raise AssertionError(f"a README command this test does not know: {command!r}")


def click_logs(folder: Path) -> None:
    rows = [f"s{s}\t{(s * 7 + n * 3) % 31}\t{1_700_000_000 + 60 * s + n}"
            for s in range(300) for n in range(4)]
    header = "SessionId\tItemId\tTime\n"
    with gzip.open(folder / "clicks.tsv.gz", "wt") as f:
        f.write(header + "\n".join(rows) + "\n")
    (folder / "train.tsv").write_text(header + "\n".join(rows[:1000]) + "\n")
    (folder / "test.tsv").write_text(header + "\n".join(rows[1000:]) + "\n")
    with gzip.open(folder / "items.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"id": str(n), "categories": [f"c{n % 3}"]}) + "\n"
                     for n in range(31))


def test_every_readme_command_runs_as_the_readme_says(standalone_url: str,
                                                      tmp_path: Path) -> None:
    blocks = sh_blocks()
    commands = [c for block in blocks for c in block]
    assert {kind(c) for c in commands} == set(HELD_TO)  # each held to what HELD_TO says
    port = free_port()
    secret = "sk_readme"
    env = {**os.environ, "SESSIONREC_REDIS_URL": standalone_url, "SECRET": secret,
           "SESSIONREC_NAMESPACE": f"readme{os.getpid()}", "SESSIONREC_SECRET_KEYS": secret,
           "SESSIONREC_BLOCK_MS": "20", "PATH": f"{Path(sys.executable).parent}:"
                                                f"{os.environ['PATH']}"}
    click_logs(tmp_path)

    def run(command: str, **changes: str | None) -> subprocess.CompletedProcess[str]:
        command = command.replace("localhost:8000", f"127.0.0.1:{port}")
        changed = {k: v for k, v in {**env, **changes}.items() if v is not None}
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, env=changed, text=True,
                              capture_output=True, timeout=300)

    # the quick start: held to --help and ./dev's own text
    assert "exec .venv/bin/sessionrec demo" in (ROOT / "dev").read_text()
    demo = run("sessionrec demo --help")
    assert demo.returncode == 0 and "memory://" in demo.stdout
    # usage: serve and worker as started, the curl lines against them
    started = {}
    for command in blocks[1]:
        line = command.replace("--port 8000", f"--port {port}")
        started[kind(command)] = subprocess.Popen(["bash", "-c", f"exec {line}"],
                                                  cwd=tmp_path, env=env, text=True,
                                                  stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-sf", f"127.0.0.1:{port}/healthz"],
                             capture_output=True).returncode:
            assert time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.1)
        for command in (c for c in commands if kind(c) == "curl"):
            done = run(command)
            assert done.returncode == 0, (command, done.stderr)
            answer = json.loads(done.stdout)
            assert "error" not in answer, (command, answer)
        while json.loads(run("curl -s localhost:8000/stats").stdout)["pending"]:
            assert time.monotonic() < deadline, "the worker did not apply the events"
            time.sleep(0.1)
        # bootstrap, evaluate, tune: load into a namespace of its own (it needs an empty one)
        bootstrap = next(b for b in blocks if any(kind(c) == "sessionrec load" for c in b))
        for command in bootstrap:
            private = kind(command) in ("sessionrec eval", "sessionrec tune --train")
            done = run(command, SESSIONREC_REDIS_URL=None if private else standalone_url,
                       SESSIONREC_NAMESPACE=f"readme{os.getpid()}-bootstrap")
            assert done.returncode == 0, (command, done.stderr)
            assert re.search(r"writing to|tuning on|training on",
                             done.stderr.splitlines()[0]), done.stderr
        assert (tmp_path / "report.md").exists() and (tmp_path / "tuned.env").exists()
    finally:
        for proc in started.values():
            proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(30) for name, proc in started.items()}
    assert codes == {"sessionrec serve": 0, "sessionrec worker": 0}


def test_the_lines_that_misled_a_new_user() -> None:
    """Issue 27, point 7: the CSV line names --delimiter, producers call partition_of on the
    session's hash, and /docs agrees with the README on when a model change applies and says
    which routes need which key."""
    readme = " ".join(README.read_text().split())
    assert "--delimiter $'\\t'" in readme and "`load` needs an empty namespace" in readme
    assert "`partition_of(session_hash(session_id), partitions)`" in readme
    assert "every serve process follows within a second" in readme
    page = api_page(Settings(), ROUTES)
    assert "few seconds" not in page and "within a second" in page
    keys = page.split("<h2>Keys</h2>", 1)[1].split("</table>", 1)[0]
    rows = dict(re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", keys))
    assert "<code>/admin/model</code>" in rows["A secret key (disabled while none is "
                                               "configured)"]
    assert "<code>/iid_recommend</code>" in next(v for k, v in rows.items()
                                                  if k.startswith("A publishable"))
    assert "<code>/metrics</code>" in next(v for k, v in rows.items()
                                            if k.startswith("A secret key, once any"))
