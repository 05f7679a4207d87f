"""docker-compose.yml parses and every service command is a real sessionrec invocation."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.cli import build_parser
from service.settings import from_args

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_run_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "worker"} <= set(services)
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendfsync") + 1] == \
        "everysec"
    assert "healthcheck" in services["redis"]
    parser = build_parser()
    seen = set()
    for name in ("api", "worker"):
        command = services[name]["command"]
        assert command[0] == "sessionrec"
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown flag
        seen.add(args.command)
        settings = from_args(args, services[name]["environment"])
        assert settings.redis_url == "redis://redis:6379/0"
        assert "container_name" not in services[name]  # would forbid --scale
    assert seen == {"serve", "worker"}


def test_dockerfile_installs_the_package_and_its_console_script() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and '"sessionrec", "serve"' in text
