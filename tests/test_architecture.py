"""The shape of the code, held by tests: one home per concern (docs/ARCHITECTURE.md).

* the serving processes (API and worker) import no offline, demo or plotting code;
* no import cycle between project modules, counting imports inside functions too;
* the entry layout and the trim rule are spelled once in Python (service/core/layout.py), the
  compiled kernel's entry size agrees with it, and the Lua scripts are given the limit;
* the request and ingest code does not branch on the topology (standalone, cluster, embedded):
  that lives in service/store/backends.py;
* answering (service/answers) and reading requests (service/requests) know nothing of HTTP:
  they import nothing from service.api; offline code imports from it only the app that the
  evaluation drives over HTTP (its figures are measured through the API, as a client would);
* no module under service/ or workers/ passes 400 lines, no class 20 methods (but Keys: one
  method per key); each request body's JSON Schema has exactly its validator's fields.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "workers")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (``from a import b`` counts as
    ``a.b`` when that is a module, else as ``a``)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def test_the_serving_processes_import_no_offline_demo_or_plotting_code() -> None:
    probe = ("import json, sys; from service.api.app import create_app; "
             "from workers.consumer import Worker; import service.cli, service.runtime; "
             "from service.settings import Settings; create_app(Settings()); "
             "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                       text=True, check=True, cwd=ROOT).stdout)
    offending = [m for m in loaded if m.startswith(("service.offline", "service.demo",
                                                    "matplotlib", "scripts"))]
    assert offending == []
    assert "service.api.app" in loaded and "service.kernel" in loaded  # the probe ran


def test_answering_and_reading_requests_know_nothing_of_http() -> None:
    modules = project_modules()
    reach: dict[str, set[str]] = {}
    for name, path in modules.items():
        api = {m for m in imports_of(name, path, modules) if m.startswith("service.api")}
        if api:
            reach[name] = api
    assert [n for n in reach if n.startswith(("service.answers", "service.requests",
                                               "service.core", "service.store"))] == []
    offline = {n: sorted(m) for n, m in reach.items() if n.startswith("service.offline")}
    assert offline == {"service.offline.evaluate": ["service.api.app"]}, offline


def test_there_is_no_import_cycle_between_project_modules() -> None:
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph["service.api.app"] and graph["workers.consumer"]  # the walk sees imports
    # a package's __init__ importing its own submodules is not a cycle of concerns
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_walk_finds_a_cycle_when_there_is_one(tmp_path: Path) -> None:
    """The cycle test above would pass on a walker that saw nothing: it must see this one."""
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("import a\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert imports_of("a", modules["a"], modules) == {"b"}
    assert imports_of("b", modules["b"], modules) == {"a"}


def python_sources() -> dict[Path, str]:
    return {p: p.read_text("utf-8") for package in (*PACKAGES, "scripts")
            for p in (ROOT / package).rglob("*.py")}


def test_the_entry_layout_and_the_trim_rule_are_spelled_once_in_python() -> None:
    layout = ROOT / "service" / "core" / "layout.py"
    spellings = {
        "a big-endian time key": re.compile(r"to_bytes\(8, \"big\"\)|from_bytes\([^)]*\"big\"\)"),
        "an entry dtype": re.compile(r"np\.dtype\(\[\(\""),
        "the trim slack": re.compile(r"max\(16"),
        "the entry size": re.compile(r"ENTRY_BYTES\s*=|HASH_BYTES\s*=|// 16\b|, 16\)|\+ 8:"),
    }
    for what, pattern in spellings.items():
        where = sorted(str(p.relative_to(ROOT)) for p, text in python_sources().items()
                       if pattern.search(text))
        assert where == [str(layout.relative_to(ROOT))], (what, where)
    lua = "".join(p.read_text("utf-8") for p in (ROOT / "service/store/lua").glob("*.lua"))
    assert "math.max(16" not in lua and "cap / 4" not in lua  # the scripts are given the limit


def test_each_scoring_parameter_is_defined_once() -> None:
    """Its default, limits and meaning in service/core/parameters.py; the settings, Params,
    the model record, the OpenAPI document and tuning derive from it (they were four copies)."""
    from service.core.parameters import PARAMETERS

    where = sorted({str(p.relative_to(ROOT)) for p, text in python_sources().items()
                    for name in PARAMETERS
                    if p != ROOT / "service/core/parameters.py"
                    and re.search(rf"\b{name}\b\s*(:\s*(int|float)\s*=\s*[-\d.]"
                                  rf"|\"?\s*:\s*(Limit|Parameter)\()", text)})
    assert where == []


def test_the_kernel_agrees_with_the_layout() -> None:
    from service.core import layout

    header = (ROOT / "service/kernel/native/kernel.h").read_text("utf-8")
    assert f"#define ENTRY {layout.ENTRY_BYTES}\n" in header


def test_the_request_and_ingest_code_does_not_branch_on_the_topology() -> None:
    """Standalone, cluster and embedded differ in service/store/backends.py only (the
    failures' vocabulary names each topology's errors of unavailability: a classification that
    every caller shares, not a branch)."""
    topology = re.compile(r"\b(is_cluster|MEMORY_URL|CLUSTER_SCHEME|\.cluster\b|\.standalone\b"
                          r"|RedisCluster|FakeRedis|fakeredis)")
    allowed = {ROOT / "service/store/backends.py", ROOT / "service/failures.py"}
    where = sorted(str(p.relative_to(ROOT)) for p, text in python_sources().items()
                   if p not in allowed and p.parent.name not in ("offline", "demo", "scripts")
                   and topology.search(text))
    assert where == []


def test_routes_are_declared_once_and_the_router_access_and_openapi_follow() -> None:
    import pytest

    from service.api.access import OPEN
    from service.api.app import create_app
    from service.api.openapi import openapi_document
    from service.api.routes import ROUTES
    from service.settings import Settings

    app = create_app(Settings())
    routed = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    assert routed == {(r.method, r.path) for r in ROUTES}
    doc = openapi_document(Settings(), ROUTES)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES if r.documented}
    for route in ROUTES:
        if route.documented:
            security = doc["paths"][route.path][route.method.lower()]["security"]
            assert ({"apiKey": []} in security) == (route.access != OPEN), route.path
    with pytest.raises(ValueError, match="without a route"):
        openapi_document(Settings(), ROUTES[1:])  # /iid_recommend's operation, unrouted


MAX_MODULE_LINES = 400
MAX_CLASS_METHODS = 20
LARGE_CLASSES = {
    # one method per key the namespace holds: splitting it would spell keys in two places,
    # and the key layout's one home is the point of the module
    "service/store/keyspace.py:Keys",
}


def test_no_module_passes_400_lines_and_no_class_20_methods() -> None:
    """A module past 400 lines or a class past 20 methods is asking to be split (the second
    reshape split Worker, Store, the OpenAPI document, the settings' docs, the rules and the
    kernel's reference along their concerns)."""
    long_modules = []
    large_classes = []
    for path, text in python_sources().items():
        if path.parts[len(ROOT.parts)] not in PACKAGES:
            continue
        where = str(path.relative_to(ROOT))
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(where)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and f"{where}:{node.name}" not in LARGE_CLASSES:
                methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef)
                              for b in node.body)
                if methods > MAX_CLASS_METHODS:
                    large_classes.append(f"{where}:{node.name} ({methods})")
    assert long_modules == [] and large_classes == []


def test_each_request_body_schema_has_exactly_its_validators_fields() -> None:
    import pytest

    from service.requests import schemas
    from service.requests.events import EVENT_FIELDS

    with pytest.raises(ValueError, match="not the validator's fields"):
        schemas._object(EVENT_FIELDS, {"session_id": {}, "item_id": {}})
    from service.settings import Settings

    event = schemas.event(Settings())
    assert tuple(event["properties"]) == EVENT_FIELDS
    assert event["additionalProperties"] is False
