"""The diagnostics' exceptions. Messages never contain a secret."""

from __future__ import annotations


class CaptureError(ValueError):
    """The captured request cannot be parsed; the message says why."""


class SignError(ValueError):
    """Invalid options; the message never contains a secret."""
