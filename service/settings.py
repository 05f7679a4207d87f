"""One typed settings object for every command, read from flags and ``SESSIONREC_*`` env vars.

Every field has a default, an env variable named after it (``SESSIONREC_`` + upper-case name)
and, for the commands that use it, a ``--flag`` of the same name with dashes. Precedence:
flag > environment > default. The README's configuration table is generated from this module
(``python -m service.offline.settingsdoc``), so the two cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from service.core.parameters import ORDER_PAIR_NAMES, PARAMETERS, default_float, default_int

ENV_PREFIX = "SESSIONREC_"


def mask_password(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host`` (any number of hosts)."""
    return re.sub(r"(?<=://)([^/@]*?):([^/@]*)@", lambda m: f"{m.group(1)}:***@", url)


COMMANDS = ("serve", "worker", "demo", "load", "catalog", "eval", "tune", "sequence")
"""The console script's commands (``service.cli``): each setting names those that read it."""


def _doc(text: str, *, commands: tuple[str, ...]) -> dict[str, Any]:
    assert set(commands) <= set(COMMANDS), commands
    return {"doc": text, "commands": commands}


def _parameter(name: str) -> dict[str, Any]:
    """A scoring parameter's setting: its meaning from its one definition."""
    return _doc(PARAMETERS[name].meaning, commands=SCORING)


def _scoring(name: str) -> Any:
    """A scoring parameter's field: its default and meaning from its one definition."""
    default = default_int(name) if PARAMETERS[name].integer else default_float(name)
    return field(default=default, metadata=_parameter(name))


ALL = COMMANDS
API = ("serve", "demo")
"""The HTTP API's settings: ``serve``, and ``demo``, which runs it."""
LEARNING = ("worker", "demo", "load", "eval", "tune")
"""What shapes the learned state: the worker's, the demo's worker, and the loader's, which
``eval`` and ``tune --train`` use to build theirs."""
SCORING = ("serve", "demo", "eval", "tune")
"""The scoring parameters: the API's, and the served model that ``eval`` and ``tune``
score."""
WORKER = ("worker", "demo")


@dataclass(frozen=True)
class Settings:
    """Configuration shared by the API, the workers, the loader and the evaluator."""

    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_doc("Redis URL; `redis+cluster://host:port` selects Redis Cluster.",
                      commands=ALL),
    )
    namespace: str = field(
        default="sr",
        metadata=_doc("Prefix of every Redis key (letters, digits, `_`, `-`, `.`).",
                      commands=ALL),
    )
    partitions: int = field(
        default=8,
        metadata=_doc("Event stream partitions (by session). Fixed for the life of a namespace.",
                      commands=ALL),
    )
    host: str = field(default="127.0.0.1", metadata=_doc("Address the API binds.",
                                                          commands=API))
    port: int = field(default=8000, metadata=_doc("Port the API listens on.", commands=API))
    processes: int = field(
        default=1,
        metadata=_doc("API processes sharing the port (SO_REUSEPORT); one per core.",
                      commands=("serve",)),
    )
    cors_origins: str = field(
        default="",
        metadata=_doc("Browser origins allowed besides the API's own, comma-separated "
                      "(`https://shop.example,https://m.shop.example`; `*` for any).",
                      commands=API))
    publishable_keys: str = field(
        default="",
        metadata=_doc("API keys safe in a browser (recommendations, events), comma-separated. "
                      "No keys at all: the API is open (a warning is logged).",
                      commands=API))
    secret_keys: str = field(
        default="",
        metadata=_doc("API keys for admin operations too (hide, forget, reset), "
                      "comma-separated.", commands=API))
    keys_file: str = field(
        default="",
        metadata=_doc("File with more keys, one per line: `publishable KEY` or `secret KEY`.",
                      commands=API))
    rate_limit: float = field(
        default=0.0,
        metadata=_doc("Requests per second per client (API key, else IP) on public endpoints; "
                      "0 turns rate limiting off.", commands=API))
    rate_burst: int = field(
        default=50, metadata=_doc("Requests a client may burst above the rate.",
                                  commands=API))
    trusted_proxies: str = field(
        default="",
        metadata=_doc("Addresses or networks of the proxies in front of the API whose "
                      "`X-Forwarded-For` is believed, comma-separated (`10.0.0.5,10.1.0.0/16`). "
                      "Empty: the header is ignored and the peer address is the client.",
                      commands=API))
    max_clock_skew: float = field(
        default=300.0,
        metadata=_doc("Seconds an event's `timestamp` may lie in the future (400 beyond; the "
                      "worker also caps any event at its arrival plus this).",
                      commands=("serve", "worker", "demo", "load")))
    redis_timeout: float = field(
        default=0.5,
        metadata=_doc("Seconds to wait for Redis before answering 503.", commands=ALL))
    read_cache_mb: int = field(
        default=256,
        metadata=_doc("Megabytes of learned histories and neighbour indexes each serve process "
                      "keeps in memory, kept exact by Redis' client-side caching (CLIENT "
                      "TRACKING: Redis announces every change). Standalone Redis without TLS; "
                      "0 turns it off.", commands=API))
    feedback_mb: int = field(
        default=256,
        metadata=_doc("Megabytes of Redis for the records of what answers listed, against which "
                      "impressions and clicks are counted (a day's worth; each hour may take a "
                      "25th). Past an hour's share, answers of that hour count no feedback.",
                      commands=API))
    feedback_client_answers: int = field(
        default=600,
        metadata=_doc("Answers per hour whose feedback one client address (an IPv6 /64) may "
                      "have counted, shared out over the partitions: past it, its answers "
                      "still come, their feedback counts nowhere, so no one address weighs "
                      "more than that in an experiment.", commands=API))
    # --- request limits -------------------------------------------------------------------
    max_body_bytes: int = field(
        default=1 << 20, metadata=_doc("Largest request body accepted, as sent and as decoded "
                                       "from gzip or deflate (413 above).", commands=API))
    max_interactions: int = field(
        default=200, metadata=_doc("Most entries in `user_interactions`.", commands=API))
    max_batch: int = field(
        default=1000, metadata=_doc("Most events in one POST /events batch.", commands=API))
    max_id_length: int = field(
        default=256,
        metadata=_doc("Longest item or session id, in characters.",
                      commands=("serve", "demo", "catalog")))
    max_k: int = field(default=1000, metadata=_doc("Largest `k` a request may ask for.",
                                                   commands=API))
    # --- live sessions ----------------------------------------------------------------------
    live_ttl: int = field(
        default=1800,
        metadata=_doc("Seconds of inactivity after which a live session expires.",
                      commands=API))
    live_cap: int = field(
        default=200, metadata=_doc("Most items kept per live session (oldest dropped).",
                                   commands=API))
    # --- learned state ----------------------------------------------------------------------
    history_ttl: int = field(
        default=30 * 86400,
        metadata=_doc("Seconds a learned session history is kept after its last event "
                      "(it is a neighbour for kNN until then).", commands=LEARNING))
    history_cap: int = field(
        default=100, metadata=_doc("Most events kept per learned session history.",
                                   commands=LEARNING))
    index_cap: int = field(default=default_int("index_cap"),
                           metadata=_doc(PARAMETERS["index_cap"].meaning,
                                         commands=("serve", *LEARNING)))
    trend_half_life: float = field(
        default=86400.0,
        metadata=_doc("Half-life in seconds of the trending (popularity) score.",
                      commands=LEARNING))
    # --- scoring (each defined once, in core/parameters.py) --------------------------------
    query_items: int = _scoring("query_items")
    sample_sessions: int = _scoring("sample_sessions")
    neighbours: int = _scoring("neighbours")
    sequence_weight: float = _scoring("sequence_weight")
    before_weight: float = _scoring("before_weight")
    position_decay: float = _scoring("position_decay")
    idf_weight: float = _scoring("idf_weight")
    repeat_weight: float = _scoring("repeat_weight")
    neighbour_half_life: float = _scoring("neighbour_half_life")
    order_score: float = _scoring("order_score")
    order_idf: float = _scoring("order_idf")
    order_sessions: float = _scoring("order_sessions")
    order_session_weight: float = _scoring("order_session_weight")
    order_last: float = _scoring("order_last")
    order_age: float = _scoring("order_age")
    order_sequence: float = _scoring("order_sequence")
    order_seen: float = _scoring("order_seen")
    # --- worker -----------------------------------------------------------------------------
    batch_size: int = field(default=500, metadata=_doc("Stream entries read per batch.",
                                                       commands=WORKER))
    block_ms: int = field(default=200, metadata=_doc("How long a worker waits for new events.",
                                                     commands=WORKER))
    max_deliveries: int = field(
        default=5,
        metadata=_doc("Attempts after which an entry that keeps failing (or crashing its "
                      "worker while applied alone) goes to the dead-letter stream.",
                      commands=WORKER))
    dead_letter_cap: int = field(
        default=10_000,
        metadata=_doc("Most entries kept per partition's dead-letter stream (oldest dropped).",
                      commands=WORKER))
    catalog_only: bool = field(
        default=False,
        metadata=_doc("Allow-list mode: events for items without a catalogue record are "
                      "accepted and counted (`events_unlisted`) but not learned.",
                      commands=WORKER))
    lease_ms: int = field(
        default=10_000,
        metadata=_doc("Partition lease; another worker takes over a dead worker's partitions "
                      "after this long.", commands=WORKER))
    # --- tuning -----------------------------------------------------------------------------
    auto_tune: bool = field(
        default=True,
        metadata=_doc("Workers start a tuning run on the live state (`sessionrec tune "
                      "--apply`, a process of its own at a lowered priority, one at a time) "
                      "when enough new sessions were learned since the last one.",
                      commands=WORKER))
    tune_min_sessions: int = field(
        default=500,
        metadata=_doc("A run starts once this many sessions, and a tenth more than the last "
                      "run saw, were learned since it.", commands=WORKER))
    tune_min_interval: float = field(
        default=3600.0,
        metadata=_doc("Seconds from the end of a run before the next automatic one.",
                      commands=WORKER))
    tune_lease_ms: int = field(
        default=30_000,
        metadata=_doc("The tuning lease (one run at a time), renewed every third of it while "
                      "a run lives: a run killed midway holds it this long at most.",
                      commands=("serve", "worker", "demo", "tune", "sequence")))
    tune_deadline: float = field(
        default=3600.0,
        metadata=_doc("Seconds a tuning run may take: past them it stops unpromoted, "
                      "releases the lease and exits, whatever it was waiting for (runs that "
                      "workers and POST /admin/tune start read it from the environment).",
                      commands=("tune", "sequence")))
    sequence_refresh: float = field(
        default=300.0,
        metadata=_doc("Seconds between sequence model runs (`sessionrec sequence --apply`, "
                      "a process of its own at a lowered priority, one at a time) while new "
                      "sessions arrive; 0: none (order_sequence then orders nothing).",
                      commands=WORKER))

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,32}", self.namespace):
            raise ValueError("namespace: use 1-32 letters, digits, '_', '-' or '.'")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in PARAMETERS and PARAMETERS[f.name].low < 0:
                # a learned order's weight may be negative: its limits are its definition's
                checked = PARAMETERS[f.name].check(value)
                if isinstance(checked, str):
                    raise ValueError(f"{f.name}: {checked}")
            elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{f.name}: must not be negative")
        if self.partitions < 1:
            raise ValueError("partitions: must be at least 1")
        self.trusted_networks  # noqa: B018 - a malformed address fails at start, not per request

    @functools.cached_property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed once."""
        try:
            return tuple(ipaddress.ip_network(part.strip(), strict=False)
                         for part in self.trusted_proxies.split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None

    def redis_url_for_logs(self) -> str:
        """``redis_url`` with any password masked: URLs are logged, passwords must not be."""
        return mask_password(self.redis_url)

    @functools.cached_property
    def allowed_origins(self) -> frozenset[str]:
        """Parsed once per settings object: every request checks it."""
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",")
                         if o.strip())

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The settings as ``SESSIONREC_*`` variables (what ``from_env`` reads back): how a
        process hands its own settings to one it starts."""
        return {ENV_PREFIX + f.name.upper(): (str(getattr(self, f.name)).lower()
                                              if isinstance(getattr(self, f.name), bool)
                                              else str(getattr(self, f.name)))
                for f in fields(self)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 defaults: Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
        """Defaults (``defaults`` over the settings' own), then ``SESSIONREC_*`` variables,
        then explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = dict(defaults or {})
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(raw: str) -> bool:
    if raw.lower() not in TRUE + FALSE:
        raise ValueError(raw)
    return raw.lower() in TRUE


def _kind(type_name: Any) -> Any:
    return {"int": int, "float": float, "str": str, "bool": _bool}[str(type_name)]


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = _kind(type_name)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: {raw!r} is not a valid "
                         f"{type_name!s}") from None


def flags_of(command: str) -> list[str]:
    """The settings ``command`` reads, in the README table's order (its ``--help`` lists
    them, by section)."""
    return [name for names in SECTIONS.values() for name in names
            if command in FIELDS[name].metadata["commands"]]


def add_arguments(parser: argparse.ArgumentParser, command: str,
                  shown_defaults: Mapping[str, str] | None = None) -> None:
    """A ``--flag`` for every setting ``command`` reads (default None: then the environment,
    then the default, win), in one argument group per section. ``shown_defaults``: what
    ``--help`` says where the command's default is not the setting's own."""
    groups: dict[str, Any] = {}
    for name in flags_of(command):
        f = FIELDS[name]
        section = SECTION_OF[name]
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        group = groups[section]
        shown = (shown_defaults or {}).get(name, f.default)
        flag = "--" + name.replace("_", "-")
        help_text = f"{f.metadata['doc']} (env {ENV_PREFIX}{name.upper()}; default: {shown})"
        help_text = help_text.replace("%", "%%")
        if str(f.type) == "bool":  # --flag and --no-flag: a default may be either
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=_kind(f.type), default=None,
                               metavar=name.upper(), help=help_text)


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None,
              defaults: Mapping[str, Any] | None = None) -> Settings:
    """Flags, then the environment, then ``defaults`` (a command's own), then the settings'
    defaults."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.from_env(env, defaults, **overrides)


SECTIONS: dict[str, tuple[str, ...]] = {
    "Redis": ("redis_url", "namespace", "partitions", "redis_timeout"),
    "API": ("host", "port", "processes", "cors_origins", "publishable_keys", "secret_keys",
            "keys_file", "rate_limit", "rate_burst", "trusted_proxies", "read_cache_mb",
            "feedback_mb", "feedback_client_answers"),
    "Request limits": ("max_clock_skew", "max_body_bytes", "max_interactions", "max_batch",
                       "max_id_length", "max_k"),
    "Live sessions": ("live_ttl", "live_cap"),
    "Learned state": ("history_ttl", "history_cap", "index_cap", "trend_half_life"),
    "Scoring": tuple(name for name in PARAMETERS
                     if name != "index_cap" and name not in ORDER_PAIR_NAMES),
    "Worker": ("batch_size", "block_ms", "max_deliveries", "dead_letter_cap", "catalog_only",
               "lease_ms"),
    "Tuning": ("auto_tune", "tune_min_sessions", "tune_min_interval", "tune_lease_ms",
               "tune_deadline", "sequence_refresh"),
}
"""The settings by concern: the README's table and ``--help`` are grouped so."""
assert sorted(n for names in SECTIONS.values() for n in names) == \
    sorted(f.name for f in fields(Settings)), "every setting in exactly one section"
SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}
FIELDS = {f.name: f for f in fields(Settings)}
