"""Command line: `gateway serve|phones|genkey|explain|sign|consume` (console script `gateway`, `python -m gateway`).

One module per command (argparse, then pure functions: gateway/diagnostics/ for explain
and sign); common.py holds what they share; main.py builds the parser.
"""

from __future__ import annotations

from gateway.cli.main import main

__all__ = ["main"]
