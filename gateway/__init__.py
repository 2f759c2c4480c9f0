"""Telephony webhook verification gateway."""

__version__ = "0.1.0"
