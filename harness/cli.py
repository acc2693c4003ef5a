"""The ``orbital`` command.

Each subcommand lives in its own module, imported only when that subcommand runs, so that
``orbital check tiny.jsonl`` does not pay for importing the simulator, ZeroMQ or matplotlib.
A subcommand module provides::

    def configure(parser: argparse.ArgumentParser) -> None   # add its arguments
    def run(args: argparse.Namespace) -> int                  # do the work, return the exit code

Exit codes are the subcommand's; argparse's usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("harness.sim.cli", "run seeded simulations of the Raft core and check invariants"),
    "check": ("harness.checker.cli", "check client histories for linearizability"),
    "report": ("harness.report", "write the HTML report of a stored chaos run"),
    "inspect": ("harness.inspect", "print a node's durable state from its data directory"),
    "node": ("raft.server", "run one Raft node process"),
    "kv": ("raft.client", "talk to a running cluster: get, put, cas, transfer"),
    "cluster": ("harness.cluster", "run a local cluster in the foreground"),
    "chaos": ("harness.runner", "run a chaos scenario (or a matrix of them) on a local cluster"),
    "serve": ("harness.store_index", "serve a store of chaos runs and its index over HTTP"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="orbital",
        description="Orbital Raft: a Raft library and a chaos-testing framework.",
        epilog=f"commands:\n{lines}\n\nRun 'orbital COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    if not args or args[0] in ("-h", "--help"):
        top.print_help()
        return 0 if args else 2
    name = args[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r} (choose from {', '.join(COMMANDS)})")
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"orbital: '{name}' is not available in this build", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"orbital {name}", description=text)
    module.configure(parser)
    ns = parser.parse_args(args[1:])
    try:
        code: int = module.run(ns)
    except KeyboardInterrupt:
        print("orbital: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
