"""The `gateway` command: one parser, one subcommand per module of this package (nothing else imports it).

Every option has an environment variable (the same names as the settings); the commands
that touch phones call the same KeyStore the admin API uses, against Redis directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway import __version__
from gateway.cli import consume, explain, genkey, phones, serve, sign, sources

COMMANDS = (serve, phones, genkey, explain, sign, consume, sources)  # in `gateway --help` order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Telephony webhook verification gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
