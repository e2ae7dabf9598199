"""`gos-tvm` command line.  Each subcommand lives in its own module with
`register(subparsers)`; modules keep heavy imports (tvm, torch) inside their handlers
so that `gos-tvm --help` stays fast.

Errors are one line on stderr, never a traceback (`--debug`, anywhere on the line, shows it):
exit status 2 for a user error (a bad argument or input, named with what to do; argparse uses 2
too), 1 for a failure of the run itself (a device lost mid-run, an internal error), 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand modules, in the order `--help` lists them; a module that is not there is skipped.
SUBCOMMAND_MODULES = [
    "gos_tvm.search.cli",   # gos-tvm tune
    "gos_tvm.demo",         # gos-tvm demo
    "gos_tvm.hw.rpc_cli",   # gos-tvm rpc tracker|server|query|...
]

EXIT_FAILURE, EXIT_USER_ERROR, EXIT_INTERRUPTED = 1, 2, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage it would print is in --help)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gos-tvm", description="Grassroots Operator Search on Apache TVM")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (may also be given after the subcommand)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def is_user_error(err: BaseException) -> bool:
    """A mistake in the user's arguments or inputs (exit status 2), as opposed to a failed run."""
    from .errors import UserError

    if isinstance(err, UserError):
        return True
    importer = sys.modules.get("gos_tvm.graph.importer")  # loaded (with TVM) only if a model was imported
    return importer is not None and isinstance(err, importer.UnsupportedModelError)


def one_line(err: BaseException, limit: int = 1500) -> str:
    """The error's message on one line (TVM and torch messages span many)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_command(func, args: argparse.Namespace, debug: bool = False) -> int:
    """Run a subcommand handler; an exception becomes one line on stderr and an exit status."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the command line's last word on any error
        if debug:
            raise
        if is_user_error(err):
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    return run_command(args.func, args, debug)


if __name__ == "__main__":
    sys.exit(main())
