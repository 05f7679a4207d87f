"""``sessionrec``: the one console script (serve, worker, demo)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection as mp_connection
import multiprocessing.process
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from service.clicklog import FORMATS
from service.settings import Settings, add_arguments, from_args

log = logging.getLogger("sessionrec")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionrec",
        description="Real-time session-based recommendations served over HTTP, backed by Redis.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP API")
    add_arguments(serve, "serve")
    worker = commands.add_parser("worker", help="run one stream consumer (as many as needed)")
    add_arguments(worker, "worker")
    demo = commands.add_parser(
        "demo", help="API, worker and sample data in one process on an embedded store")
    add_arguments(demo, "serve")
    loader = commands.add_parser(
        "load", help="bootstrap the learned state from historical click logs")
    loader.add_argument("files", nargs="+", metavar="FILE", help="click logs (.gz allowed)")
    _log_format_arguments(loader)
    add_arguments(loader, "worker")
    evaluate = commands.add_parser(
        "eval", help="next-item accuracy of sessionrec and baselines on a dataset")
    evaluate.add_argument("--train", required=True, help="training click log")
    evaluate.add_argument("--test", required=True, help="test click log")
    _log_format_arguments(evaluate)
    evaluate.add_argument("--protocol", choices=("static", "streaming", "both"),
                          default="static")
    evaluate.add_argument("--models", default="sessionrec,pop,cooc,sr,vsknn",
                          help="comma-separated: sessionrec, pop, cooc, sr, vsknn")
    evaluate.add_argument("--limit", type=int, default=None,
                          help="evaluate only the first N predictions")
    evaluate.add_argument("--no-http", dest="http", action="store_false",
                          help="call the serving code directly instead of through HTTP")
    evaluate.add_argument("--out", default=None,
                          help="write the Markdown report and PNG chart with this path prefix")
    evaluate.add_argument("--title", default=None, help="report title")
    add_arguments(evaluate, "serve", "worker")
    tuner = commands.add_parser(
        "tune", help="choose model parameters on a validation split cut from training data")
    tuner.add_argument("--train", required=True, help="training click log (never the test)")
    _log_format_arguments(tuner)
    tuner.add_argument("--valid-fraction", type=float, default=0.1,
                       help="last fraction of training sessions used for validation")
    tuner.add_argument("--limit", type=int, default=20000,
                       help="validation predictions per trial")
    tuner.add_argument("--params", default=None,
                       help="comma-separated parameters to search (default: all)")
    tuner.add_argument("--out", default="tuned.env", help="env file to write")
    add_arguments(tuner, "serve", "worker")
    return parser


def _log_format_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="click log format (default: detected from the header)")
    parser.add_argument("--columns", default="",
                        help="for --format csv: session=COL,item=COL[,time=COL]")
    parser.add_argument("--delimiter", default=",", help="for --format csv")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return
    uvloop.install()


def tune_gc() -> None:
    """Move everything loaded so far out of the collector's sight and collect less often: a
    request or a worker batch allocates hundreds of short-lived containers (replies, answer
    rows, events), and the default threshold ran a collection every few requests (about 5 %
    of a request's CPU in process, measured)."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


REFUSED = 2
"""Exit code of a serve process that refused its configuration (another partition count, a
Redis that evicts any key): restarting it would only refuse again."""


def _serve_one(settings: Settings, sock: socket.socket | None) -> None:
    from service.app import create_app

    if sock is not None:  # a forked child: not the supervisor's handlers (run_app sets its own)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from service import _kernel

        _kernel.reseed()  # a salt of its own for the kernel's tables, not the parent's
    install_uvloop()
    app = create_app(settings)
    tune_gc()
    try:
        if sock is None:
            web.run_app(app, host=settings.host, port=settings.port, print=None,
                        shutdown_timeout=10, access_log=None)
        else:
            web.run_app(app, sock=sock, print=None, shutdown_timeout=10, access_log=None)
    except RuntimeError as exc:  # raised by the start-up checks (Store.prepare)
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
    log.info("sessionrec API on http://%s:%d (%d process(es), redis %s)", settings.host,
             settings.port, settings.processes, settings.redis_url_for_logs())
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

    # asyncio's own loop, not uvloop: the worker drained the DIGINETICA log 5-9 % faster on it
    # (45,000 / 46,300 vs 42,900 / 42,300 events/s, alternating runs of this command), the
    # order in which it wakes the partitions keeping Redis busier
    tune_gc()

    async def main() -> None:
        w = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.stop)
        log.info("worker %s consuming %d partition(s) of %s", w.id, settings.partitions,
                 settings.redis_url_for_logs())
        try:
            await w.run()
        finally:
            await w.redis.aclose()
        log.info("worker %s stopped after applying %d events", w.id, w.applied)
    asyncio.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from service.demo import run_demo

            settings = from_args(args)
            if args.redis_url is None and not os.environ.get("SESSIONREC_REDIS_URL"):
                settings = settings.replace(redis_url="memory://")
            return run_demo(settings)
        if args.command in ("load", "eval", "tune"):
            from service import commands as offline

            return {"load": offline.load_command, "eval": offline.eval_command,
                    "tune": offline.tune_command}[args.command](args)
        settings = from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "serve":
        return serve(settings)
    return worker(settings)


if __name__ == "__main__":
    sys.exit(main())
