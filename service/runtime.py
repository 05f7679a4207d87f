"""How the processes run: the event loop (uvloop for the API), the collector's tuning, the
shared listening socket, the supervisor of ``serve --processes N`` and the worker's main.
The CLI parses and dispatches to these; the demo uses them too."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection as mp_connection
import multiprocessing.process
import signal
import socket
import sys
import time

from aiohttp import web

from service.failures import REFUSED, Refused
from service.settings import Settings

log = logging.getLogger("sessionrec")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return
    uvloop.install()


def tune_gc() -> None:
    """Move everything loaded so far out of the collector's sight and collect less often: a
    request or a worker batch allocates hundreds of short-lived containers (replies, answer
    rows, events), and the default threshold ran a collection every few requests."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)




def _serve_one(settings: Settings, sock: socket.socket | None) -> None:
    from service.api.app import create_app

    if sock is not None:  # a forked child: not the supervisor's handlers (run_app sets its own)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from service import kernel

        kernel.reseed()  # a salt of its own for the kernel's tables, not the parent's
    install_uvloop()
    app = create_app(settings)
    tune_gc()
    try:
        if sock is None:
            web.run_app(app, host=settings.host, port=settings.port, print=None,
                        shutdown_timeout=10, access_log=None)
        else:
            web.run_app(app, sock=sock, print=None, shutdown_timeout=10, access_log=None)
    except Refused as exc:  # raised by the start-up checks (Store.prepare)
        log.error("%s", exc)
        sys.exit(REFUSED)


def _reuse_port_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> int:
    log.info("sessionrec API on http://%s:%d (%d process(es)), Redis %s, namespace %s",
             settings.host, settings.port, settings.processes, settings.redis_url_for_logs(),
             settings.namespace)
    if settings.processes <= 1:
        _serve_one(settings, None)
        return 0
    return Supervisor(settings).run()


class Supervisor:
    """``serve --processes N``: N forked API processes sharing the port (SO_REUSEPORT), each
    restarted when it dies (a crash, the OOM killer, a stray SIGKILL), with a backoff when
    one keeps dying at once. A child that refused its configuration stops them all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False
        self.restarts = 0

    def start_child(self) -> multiprocessing.process.BaseProcess:
        sock = _reuse_port_socket(self.settings)
        child = multiprocessing.get_context("fork").Process(
            target=_serve_one, args=(self.settings, sock), daemon=False)
        child.start()
        sock.close()
        child.started = time.monotonic()  # type: ignore[attr-defined]
        return child

    def stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        self.stopping = True
        for c in self.children:
            if c.pid is not None and c.is_alive():
                c.terminate()

    def run(self) -> int:
        self.children = [self.start_child() for _ in range(self.settings.processes)]
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        backoff = 0.0
        refused = False
        while not self.stopping:
            mp_connection.wait([c.sentinel for c in self.children], timeout=1.0)
            for n, child in enumerate(self.children):
                if self.stopping or child.is_alive():
                    continue
                if child.exitcode == REFUSED:
                    refused = True
                    self.stop()
                    break
                lived = time.monotonic() - child.started  # type: ignore[attr-defined]
                backoff = 0.0 if lived > 10 else min(max(backoff * 2, 0.5), 30.0)
                log.warning("API process %d exited (code %s) after %.1f s; restarting it%s",
                            child.pid, child.exitcode, lived,
                            f" in {backoff:.1f} s" if backoff else "")
                if backoff:
                    time.sleep(backoff)
                if not self.stopping:
                    self.children[n] = self.start_child()
                    self.restarts += 1
        for c in self.children:
            c.join()
        if refused:
            return REFUSED
        return max((c.exitcode or 0) for c in self.children)


def worker(settings: Settings) -> int:
    from workers.consumer import Worker

    # asyncio's own loop, not uvloop: the worker drains a log faster on it (the order in which
    # it wakes the partitions keeps Redis busier; docs/BENCHMARKS.md, worker)
    tune_gc()

    async def main() -> None:
        w = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.stop)
        log.info("worker %s consuming %d partition(s) of Redis %s, namespace %s", w.id,
                 settings.partitions, settings.redis_url_for_logs(), settings.namespace)
        try:
            await w.run()
        finally:
            await w.redis.aclose()
        log.info("worker %s stopped after applying %d events", w.id, w.applied)
    asyncio.run(main())
    return 0
