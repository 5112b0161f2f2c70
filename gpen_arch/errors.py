"""Errors raised while reading GPEN checkpoints."""

from __future__ import annotations


class UnsupportedCheckpointError(ValueError):
    """A file that cannot be used as a GPEN model; the message says what was expected, found, and what to do."""
