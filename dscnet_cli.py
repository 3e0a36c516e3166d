"""The `dscnet` command: train, evaluate, export (need the [train] extra), serve, predict."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dscnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from training import cli as training_cli  # imports no TensorFlow until a command runs
    from app import cli as serving_cli
    from app import validation

    training_cli.add_commands(commands)
    serving_cli.add_commands(commands)
    validation.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
