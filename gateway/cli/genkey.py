"""`gateway genkey`: print a new random 32-byte key, base64 (for GATEWAY_KEK)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import generate_key


def run(_args: argparse.Namespace) -> int:
    sys.stdout.write(generate_key() + "\n")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("genkey", help="print a new random 32-byte key (for GATEWAY_KEK)")
    p.set_defaults(func=run)
