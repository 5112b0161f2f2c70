"""Errors raised while reading GPEN checkpoints."""

from __future__ import annotations


class UnsupportedCheckpointError(ValueError):
    """A file that cannot be used as a GPEN model; the message says what was expected, found, and what to do."""


class MissingDependencyError(ImportError):
    """An optional package needed for this kind of file is not installed; the message says what to install."""
