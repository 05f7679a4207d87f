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
    # bounded, and never evicting a key without an expiry (streams, groups, watermarks)
    assert "--maxmemory" in redis_cmd
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1].startswith("volatile-")
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
    for line in text.splitlines():  # what the build copies exists (setup.py builds the kernel)
        if line.startswith("COPY") and "--from" not in line:
            for path in line.split()[1:-1]:
                assert (ROOT / path).exists(), path
    assert "setup.py" in text and "gcc" in text


def test_the_wheel_carries_the_compiled_kernel(tmp_path: Path) -> None:
    """What the Dockerfile's build stage does: a wheel with the kernel compiled into it, the
    Lua scripts and static files beside the code."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "--wheel-dir", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("sessionrec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("service/kernel/_native.") and n.endswith(".so") for n in names)
    assert "service/store/lua/commit.lua" in names and "service/api/static/sdk.js" in names


def test_cluster_compose_has_six_nodes_two_apis_behind_nginx_and_three_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    services = compose["services"]
    nodes = [name for name in services if name.startswith("redis-")]
    assert len(nodes) == 6
    addresses = []
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert "--appendonly" in command
        assert "--maxmemory" in command
        assert command[command.index("--maxmemory-policy") + 1].startswith("volatile-")
        addresses.append(services[name]["networks"]["cluster"]["ipv4_address"])
    create = services["cluster-init"]["command"][-1]
    assert all(f"{ip}:6379" in create for ip in addresses) and "--cluster-replicas 1" in create
    parser = build_parser()
    for name, wanted in (("api-1", "serve"), ("api-2", "serve"), ("worker", "worker")):
        args = parser.parse_args(services[name]["command"][1:])
        assert args.command == wanted
        settings = from_args(args, services[name]["environment"])
        seeds = settings.redis_url.removeprefix("redis+cluster://").split(",")
        assert settings.redis_url.startswith("redis+cluster://") and \
            {seed.split(":")[0] for seed in seeds} <= set(addresses)
    assert services["worker"]["deploy"]["replicas"] == 3
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server api-1:8000" in conf and "server api-2:8000" in conf
    assert any("deploy/nginx.conf" in volume for volume in services["nginx"]["volumes"])


def test_the_api_believes_x_forwarded_for_from_nginx_only() -> None:
    """Rate limits are per client address: behind nginx the API must trust nginx's header,
    and nginx must not pass on what a client wrote in it."""
    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    services = compose["services"]
    nginx = services["nginx"]["networks"]["cluster"]["ipv4_address"]
    for name in ("api-1", "api-2"):
        env = services[name]["environment"]
        assert env["SESSIONREC_TRUSTED_PROXIES"] == nginx
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf
    assert "$proxy_add_x_forwarded_for" not in conf


def test_without_a_c_compiler_the_package_installs_and_serves(tmp_path: Path) -> None:
    """A machine without a C compiler: the wheel builds without the kernel (the extension is
    optional), and the installed package serves on the pure reference, saying so."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    import zipfile

    # the sources as a fresh clone has them (this checkout holds a built extension)
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
                            "--wheel-dir", str(tmp_path), str(source)], check=True,
                           capture_output=True, text=True, env=env)
    assert "failed" in (built.stdout + built.stderr).lower()  # the compiler was tried
    (wheel,) = tmp_path.glob("sessionrec-*.whl")
    assert not any(n.endswith((".so", ".pyd")) for n in zipfile.ZipFile(wheel).namelist())
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_env = {**os.environ, "PYTHONPATH": str(site), "SESSIONREC_KERNEL": "",
                 "SESSIONREC_REDIS_URL": "memory://", "SESSIONREC_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=site,
                              env=serve_env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def post(path: str, body: object) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    try:
        for _ in range(600):
            assert server.poll() is None, server.communicate()[1]
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        status, answer = post("/iid_recommend", {"user_interactions": {"a": {}}, "k": 3})
        assert status == 200 and "recommendations" in answer
        status, _ = post("/events", {"session_id": "s", "item_id": "a"})
        assert status == 202
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=10)
    # the checkout's own package has the extension: the warning proves the wheel's served
    assert "compiled kernel is not built" in stderr
