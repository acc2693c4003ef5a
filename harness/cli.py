"""The ``orbital`` command.

Each subcommand lives in its own module, imported only when that subcommand runs, so that
``orbital check tiny.jsonl`` does not pay for importing the simulator, ZeroMQ or matplotlib.
A subcommand module provides::

    def configure(parser: argparse.ArgumentParser) -> None   # add its arguments
    def run(args: argparse.Namespace) -> int                  # do the work, return the exit code

Exit codes are the subcommand's; argparse's usage errors exit 2; an interrupted command exits
``128 + signal`` (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: :mod:`harness.signals`).

Shell completion (argcomplete): ``eval "$(orbital completion bash)"`` (or ``zsh``, ``fish``).
While completing, every subcommand's parser is built, so options of each are offered.

Packaging: ``pip install orbital-raft`` has the library and the commands that need only it
(``node``, ``kv``, ``inspect``, ``check``, ``sim``); a command that needs the chaos extra
says so in one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from harness import signals

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("harness.sim.cli", "run seeded simulations of the Raft core and check invariants"),
    "check": ("harness.checker.cli", "check client histories for linearizability"),
    "report": ("harness.report", "write the HTML report of a stored chaos run"),
    "inspect": ("harness.inspect", "print a node's durable state from its data directory"),
    "node": ("raft.server", "run one Raft node process"),
    "kv": ("raft.client", "talk to a running cluster: get, put, cas, status, submit, ..."),
    "keys": ("raft.keys", "CURVE keys and a cluster file for a deployment"),
    "cluster": ("harness.cluster", "run a local cluster in the foreground"),
    "chaos": ("harness.runner", "run, list or matrix chaos scenarios on a local cluster"),
    "completion": ("harness.cli", "print the shell completion script (bash, zsh, fish)"),
    "serve": ("harness.store_index", "serve a store of chaos runs and its index over HTTP"),
}

#: third-party modules of the ``chaos`` extra (pyproject.toml)
CHAOS_EXTRA = {
    "psutil",
    "toxiproxy",
    "requests",
    "rich",
    "matplotlib",
    "numpy",
    "tomli_w",
    "grpc",
    "aetcd",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("orbital-raft")
    except PackageNotFoundError:
        return "0+unknown (not installed)"


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="orbital",
        description="Orbital Raft: a Raft library and a chaos-testing framework.",
        epilog=f"commands:\n{lines}\n\nRun 'orbital COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"orbital {version()}")
    return parser


def _load(name: str) -> ModuleType | str:
    """The subcommand's module, or a one-line reason it cannot run in this installation."""
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing in CHAOS_EXTRA:
            return (
                f"'orbital {name}' needs the chaos-testing framework (missing module "
                f"{missing!r}): pip install 'orbital-raft[chaos]'"
            )
        if exc.name == module_name:
            return f"'{name}' is not available in this build"
        raise


def _full_parser() -> argparse.ArgumentParser:
    """Every subcommand's parser under one, for shell completion."""
    top = _top_parser()
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        module = _load(name)
        p = sub.add_parser(name, help=text, description=text)
        if isinstance(module, ModuleType):
            module.configure(p)
    return top


def _complete() -> None:
    """When the shell asks for completions (argcomplete sets _ARGCOMPLETE), answer and exit."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ModuleNotFoundError:
        return
    argcomplete.autocomplete(_full_parser())


def configure(parser: argparse.ArgumentParser) -> None:
    """``orbital completion SHELL``."""
    parser.add_argument("shell", choices=("bash", "zsh", "fish"), help="your shell")


def run(args: argparse.Namespace) -> int:
    """Print the completion script for ``args.shell``."""
    try:
        from argcomplete.shell_integration import shellcode
    except ModuleNotFoundError:
        print(
            "orbital completion: needs argcomplete: pip install 'orbital-raft[chaos]'",
            file=sys.stderr,
        )
        return 2
    print(shellcode(["orbital"], shell=args.shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _complete()
    args = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    if not args or args[0] in ("-h", "--help"):
        top.print_help()
        return 0 if args else 2
    if args[0] == "--version":
        top.parse_args(args[:1])  # prints the version and exits 0
    name = args[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r} (choose from {', '.join(COMMANDS)})")
    module = _load(name)
    if isinstance(module, str):
        print(f"orbital: {module}", file=sys.stderr)
        return 2
    text = COMMANDS[name][1]
    parser = argparse.ArgumentParser(prog=f"orbital {name}", description=text)
    module.configure(parser)
    ns = parser.parse_args(args[1:])
    signals.reset()
    signals.install()
    try:
        code: int = module.run(ns)
    except KeyboardInterrupt:
        print("orbital: interrupted", file=sys.stderr)
        return signals.exit_code()
    return code


if __name__ == "__main__":
    sys.exit(main())
