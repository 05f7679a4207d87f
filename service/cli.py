"""``sessionrec``: the one console script. Parsing, dispatch, and the one place where a
command's failure becomes one line saying what to do (``run``)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from service import runtime
from service.failures import REFUSED, UNAVAILABLE, Refused
from service.settings import Settings, add_arguments, from_args, mask_password

LOG_FORMATS = ("auto", "srgnn", "sessionrec", "csv")
"""What ``--format`` offers; ``service.offline.clicklog.FORMATS`` reads each (a test holds the
two equal: the serving process does not import the offline tools to build its parser)."""

PRIVATE_REDIS = "a private redis-server, started for the run and stopped after it"
EMBEDDED = "memory://"  # the URL of the embedded store (service.store.backends)
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {"demo": {"redis_url": EMBEDDED}}
"""Where a command's default is not the setting's own: the demo needs no Redis."""
SHOWN_DEFAULTS: dict[str, dict[str, str]] = {
    "demo": {"redis_url": f"{EMBEDDED} (the embedded store, in this process)"},
    "eval": {"redis_url": PRIVATE_REDIS},
    "tune": {"redis_url": f"with --apply {Settings.redis_url}; with --train {PRIVATE_REDIS}"},
}
TRAIN_ONLY = ("--valid-fraction", "--limit", "--params", "--out", "--format", "--columns",
              "--delimiter")
"""``tune``'s flags for a log (``--train``): given with ``--apply`` they are refused."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default, except where there is none to show (None, a switch) or its help
    says it already (the settings: flag, then environment, then default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 \
                or "default" in text:
            return text
        if action.default == "":
            return text + " (default: none)"
        return super()._get_help_string(action)


class Noted(argparse.Action):
    """Stores the value, and notes that the flag was given (``given``): how a command tells
    a flag the user gave, to refuse it where it contradicts another, from a default."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*given(namespace), self.option_strings[0]}


def given(args: argparse.Namespace) -> set[str]:
    return set(getattr(args, "given", ()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionrec", formatter_class=HelpFormatter,
        description="Real-time session-based recommendations served over HTTP, backed by "
                    "Redis.")
    parser.add_argument("--log-level", default="INFO",
                        help="DEBUG, INFO, WARNING or ERROR; DEBUG also shows the traceback "
                             "of a command that failed")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None
                ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=description or summary,
                                  formatter_class=HelpFormatter)
        sub.set_defaults(command_parser=sub)  # its own usage in the errors of check_flags
        return sub

    serve = command("serve", "run the HTTP API")
    worker = command("worker", "run one stream consumer (as many as needed)")
    demo = command("demo", "API, worker and sample data in one process, on an embedded store "
                           "unless a Redis URL is given")
    loader = command("load", "bootstrap the learned state from historical click logs",
                     "Learn historical click logs into an empty namespace (bulk, no stream): "
                     "the state streaming the same events through the workers would leave.")
    loader.add_argument("files", nargs="+", metavar="FILE", help="click logs (.gz allowed)")
    _log_format_arguments(loader)
    importer = command("catalog", "import catalogue records from JSON lines or CSV",
                       "Check a catalogue file as the API checks a record (a bad line names "
                       "its line and field, and nothing is stored), then store it.")
    importer.add_argument("file", metavar="FILE", help="JSON lines (one record per line, "
                          "with its id) or CSV with an id column (.gz allowed)")
    importer.add_argument("--format", default="auto", choices=("auto", "jsonl", "csv"),
                          help="auto: JSON lines when the first line starts with {")
    evaluate = command("eval", "next-item accuracy of sessionrec and baselines on a dataset")
    evaluate.add_argument("--train", required=True, help="training click log")
    evaluate.add_argument("--test", required=True, help="test click log")
    _log_format_arguments(evaluate)
    evaluate.add_argument("--protocol", choices=("static", "streaming", "both"),
                          default="static",
                          help="static: every prefix of every test session predicts its next "
                               "item from the training state; streaming: test events arrive "
                               "in time order and are learned as they come, each predicted "
                               "before it is learned")
    evaluate.add_argument("--models", default="sessionrec,pop,cooc,sr,vsknn",
                          help="comma-separated: sessionrec, pop, cooc, sr, vsknn")
    evaluate.add_argument("--limit", type=int, default=None,
                          help="evaluate only the first N predictions (default: all)")
    served = evaluate.add_mutually_exclusive_group()
    served.add_argument("--no-http", dest="http", action="store_false",
                        help="call the serving code directly instead of through HTTP")
    served.add_argument("--self-tune", action="store_true",
                        help="sessionrec tuning itself: the training log loaded, one tuning "
                             "run (POST /admin/tune, GET /model to its end), then the test "
                             "through POST /iid_recommend")
    evaluate.add_argument("--out", default=None, metavar="PREFIX",
                          help="write the Markdown report (PREFIX.md) and, with matplotlib "
                               "(pip install 'sessionrec[eval]'), its charts (PREFIX-*.png); "
                               "default: the tables on stdout only")
    evaluate.add_argument("--title", default=None,
                          help="report title (default: the training log's folder name)")
    tuner = command(
        "tune", "choose model parameters on a validation split cut from training data, "
                "or (--apply) on the live state, promoting them if better",
        "Choose the scoring parameters on the validation split of a training log (--train; "
        "the learned-state settings shape the state it builds), or on the state the workers "
        "learned (--apply), promoting them into the shared model record if they beat the "
        "ones in force.")
    mode = tuner.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", default=None,
                      help="training click log (never the test): tune on its validation split "
                           "and write the best parameters to --out")
    mode.add_argument("--apply", action="store_true",
                      help="tune on the learned state in Redis (a holdout of its most recently "
                           "arrived sessions) and promote the best parameters into the shared "
                           "model record if they beat the ones in force")
    tuner.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    tuner.add_argument("--trigger", default="cli", choices=("cli", "admin", "auto"),
                       help=argparse.SUPPRESS)
    offline = tuner.add_argument_group("with --train")
    _log_format_arguments(offline)
    offline.add_argument("--valid-fraction", type=float, default=0.1, action=Noted,
                         help="last fraction of training sessions used for validation")
    offline.add_argument("--limit", type=int, default=20000, action=Noted,
                         help="validation predictions per trial")
    offline.add_argument("--params", default=None, action=Noted,
                         help="comma-separated parameters to search (default: all)")
    offline.add_argument("--out", default="tuned.env", action=Noted,
                         help="env file to write")
    sequence = command(
        "sequence", "train the sequence model on the live state now (workers do it every "
                    "--sequence-refresh seconds)",
        "Train the sequence model (the learned order's order_sequence feature) on the newest "
        "sessions the workers learned, resuming the stored model if there is one, and store "
        "it for every serve process.")
    sequence.add_argument("--apply", action="store_true", required=True,
                          help="train on the learned state in Redis and store the model")
    sequence.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    for name, sub in (("serve", serve), ("worker", worker), ("demo", demo), ("load", loader),
                      ("catalog", importer), ("eval", evaluate), ("tune", tuner),
                      ("sequence", sequence)):
        add_arguments(sub, name, SHOWN_DEFAULTS.get(name))
    return parser


def _log_format_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--format", default="auto", choices=LOG_FORMATS, action=Noted,
                        help="click log format; auto: srgnn or sessionrec, told by the header")
    parser.add_argument("--columns", default="", action=Noted,
                        help="the columns of --format csv: session=COL,item=COL[,time=COL] "
                             "(implies --format csv)")
    parser.add_argument("--delimiter", default=",", action=Noted,
                        help="the column separator of --format csv ($'\\t' for a TSV)")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other (argparse's error, naming both)."""
    sub: argparse.ArgumentParser = args.command_parser
    flags = given(args)
    if args.command == "tune" and args.apply:
        for flag in TRAIN_ONLY:
            if flag in flags:
                sub.error(f"argument {flag}: not allowed with argument --apply (it is for "
                          "--train)")
    if hasattr(args, "columns") and args.format in ("srgnn", "sessionrec"):
        for flag in ("--columns", "--delimiter"):
            if flag in flags:
                sub.error(f"argument {flag}: not allowed with argument --format "
                          f"{args.format} (it is for --format csv)")
    if hasattr(args, "columns") and args.columns and args.format == "auto":
        args.format = "csv"


def settings_of(args: argparse.Namespace) -> Settings:
    return from_args(args, defaults=COMMAND_DEFAULTS.get(args.command))


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from service.demo import run_demo

        return run_demo(settings_of(args))
    if args.command in ("load", "catalog", "eval", "tune", "sequence"):
        from service.offline import commands as offline

        command: Callable[[argparse.Namespace], int] = {
            "load": offline.load_command, "catalog": offline.catalog_command,
            "eval": offline.eval_command, "tune": offline.tune_command,
            "sequence": offline.sequence_command}[args.command]
        return command(args)
    if args.command == "serve":
        return runtime.serve(settings_of(args))
    return runtime.worker(settings_of(args))


def failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one line a command's failure is told in, or None for a bug (its traceback)."""
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, UNAVAILABLE):
        url = mask_password(settings_of(args).redis_url)
        return (f"cannot reach Redis at {url} ({type(exc).__name__}: {exc}): start it, or "
                "name the one to use with --redis-url (SESSIONREC_REDIS_URL)")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(args)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings_of(args)  # the environment's values are checked before any work
    except ValueError as exc:
        parser.error(str(exc))
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The command, and the one place its failure becomes one line on stderr and exit code 2:
    a failure the user can fix says what to do; a traceback is shown with ``--log-level
    DEBUG``, or for a bug."""
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        print(f"sessionrec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = failure(exc, args)
        if line is None:
            raise
        if args.log_level.upper() == "DEBUG":
            traceback.print_exc()
        print(f"sessionrec {args.command}: {' '.join(line.split())}", file=sys.stderr)
        return REFUSED


if __name__ == "__main__":
    sys.exit(main())
