"""The package asks for the versions the code needs: an install that satisfies pyproject.toml
must not be missing an API the code calls, nor carry a parser with known smuggling holes."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
NEEDED = {
    "hiredis": "3.2",  # hiredis.PushNotification (service/store/transport.py)
    "aiohttp": "3.14.3",  # request-smuggling and parser fixes
    "redis": "5.0.1",  # Redis.from_pool
}


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def test_every_floor_the_code_needs_is_declared() -> None:
    declared = requirements()
    for name, floor in NEEDED.items():
        assert name in declared, f"{name} is not a declared dependency"
        spec = declared[name].specifier
        # nothing below the floor may satisfy the requirement
        below = Version(floor).release
        just_below = Version(".".join(map(str, (*below[:-1], below[-1] - 1)))) \
            if below[-1] > 0 else Version(f"{below[0] - 1}.99")
        assert not spec.contains(just_below, prereleases=True), (name, str(spec))
        assert spec.contains(floor), (name, str(spec))


CEILINGS = {
    # internals the hot paths use: redis._parsers.base.BaseParser.parse_error and a pool's
    # connection_class / connection_kwargs (service/store/transport.py); a cluster node's
    # acquire_connection / send_packed_command / read_response and the nodes manager's slot
    # map (service/store/backends.py). Raise the ceiling after the suite passes on the new
    # major release.
    "redis": "9",
}


def test_every_ceiling_the_code_needs_is_declared() -> None:
    declared = requirements()
    for name, ceiling in CEILINGS.items():
        spec = declared[name].specifier
        assert not spec.contains(ceiling, prereleases=True), (name, str(spec))
        assert spec.contains(version(name)), (name, str(spec), version(name))


def test_the_internals_the_hot_paths_use_are_there() -> None:
    """What the ceiling stands for, checked on the installed release."""
    import redis.asyncio as aioredis
    from redis._parsers.base import BaseParser
    from redis.asyncio.cluster import ClusterNode, NodesManager

    assert callable(BaseParser.parse_error)
    pool = aioredis.ConnectionPool(host="127.0.0.1", port=1)
    assert pool.connection_class is aioredis.Connection
    assert pool.connection_kwargs["port"] == 1
    for method in ("acquire_connection", "release"):
        assert callable(getattr(ClusterNode, method)), method
    assert callable(NodesManager.get_node_from_slot)
    for method in ("send_packed_command", "read_response", "disconnect"):
        assert callable(getattr(aioredis.Connection, method)), method


def test_the_installed_versions_meet_them() -> None:
    for name, floor in NEEDED.items():
        assert Version(version(name)) >= Version(floor), name


def test_the_license_is_an_spdx_expression_the_build_backend_reads() -> None:
    """A license table made setuptools print a deprecation banner three times per install
    (issue 27, point 9); a string needs setuptools 77 or later to be read as SPDX."""
    from packaging.licenses import canonicalize_license_expression

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    license_ = pyproject["project"]["license"]
    assert isinstance(license_, str)
    assert canonicalize_license_expression(license_) == license_
    [backend] = [Requirement(r) for r in pyproject["build-system"]["requires"]
                 if Requirement(r).name == "setuptools"]
    assert not backend.specifier.contains("76.9") and backend.specifier.contains("77.0")
