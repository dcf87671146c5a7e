"""The ``geomexpl`` command line: one sub-command per module in :mod:`geomexpl.commands`.

Each command module exposes ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "train", "attack", "curvature", "sanity", "robust")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geomexpl",
        description=(
            "Show, with numbers and pictures, that saliency explanations can be manipulated, "
            "and why: the curvature of the network's level sets. "
            "Run `geomexpl <command> --help` for the options of a command."
        ),
    )
    from geomexpl import __version__

    parser.add_argument("--version", action="version", version=f"geomexpl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        module = importlib.import_module(f"geomexpl.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.configure(cmd)
        cmd.add_argument("--deterministic", action="store_true",
                         help="deterministic kernels (seeded runs repeat exactly on a GPU; an op "
                              "without a deterministic kernel raises)")
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.deterministic:
        from geomexpl.numerics import deterministic

        deterministic(getattr(args, "seed", 0))
    from geomexpl.nets import UnsupportedActivationError  # a TypeError: a kinked activation, named

    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, UnsupportedActivationError) as err:
        print(f"geomexpl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
