"""`gos-tvm` command line.  Each subcommand lives in its own module with
`register(subparsers)`; modules keep heavy imports (tvm, torch) inside their handlers
so that `gos-tvm --help` stays fast."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gos-tvm", description="Grassroots Operator Search on Apache TVM")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
