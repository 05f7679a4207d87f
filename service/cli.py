"""``sessionrec``: the one console script (serve, worker, demo)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from service import runtime
from service.settings import add_arguments, from_args

LOG_FORMATS = ("auto", "srgnn", "sessionrec", "csv")
"""What ``--format`` offers; ``service.offline.clicklog.FORMATS`` reads each (a test holds the
two equal: the serving process does not import the offline tools to build its parser)."""



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
    importer = commands.add_parser(
        "catalog", help="import catalogue records from JSON lines or CSV (.gz allowed)")
    importer.add_argument("file", metavar="FILE", help="JSON lines (one record per line, "
                          "with its id) or CSV with an id column")
    importer.add_argument("--format", default="auto", choices=("auto", "jsonl", "csv"),
                          help="default: detected from the first line")
    add_arguments(importer, "worker")
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
    evaluate.add_argument("--self-tune", action="store_true",
                          help="sessionrec tuning itself: the training log loaded, one "
                               "tuning run (POST /admin/tune, GET /model to its end), then "
                               "the test through POST /iid_recommend")
    evaluate.add_argument("--out", default=None,
                          help="write the Markdown report and PNG chart with this path prefix")
    evaluate.add_argument("--title", default=None, help="report title")
    add_arguments(evaluate, "serve", "worker")
    tuner = commands.add_parser(
        "tune", help="choose model parameters on a validation split cut from training data, "
                     "or (--apply) on the live state, promoting them if better")
    tuner.add_argument("--train", default=None,
                       help="training click log (never the test); without --apply, required")
    tuner.add_argument("--apply", action="store_true",
                       help="tune on the learned state in Redis (a holdout of its most recent "
                            "sessions) and promote the best parameters into the shared model "
                            "record if they beat the ones in force")
    tuner.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    tuner.add_argument("--trigger", default="cli", choices=("cli", "admin", "auto"),
                       help=argparse.SUPPRESS)
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
    parser.add_argument("--format", default="auto", choices=LOG_FORMATS,
                        help="click log format (default: detected from the header)")
    parser.add_argument("--columns", default="",
                        help="for --format csv: session=COL,item=COL[,time=COL]")
    parser.add_argument("--delimiter", default=",", help="for --format csv")


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
        if args.command in ("load", "catalog", "eval", "tune"):
            from service.offline import commands as offline

            return {"load": offline.load_command, "catalog": offline.catalog_command,
                    "eval": offline.eval_command, "tune": offline.tune_command}[args.command](args)
        settings = from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "serve":
        return runtime.serve(settings)
    return runtime.worker(settings)


if __name__ == "__main__":
    sys.exit(main())
