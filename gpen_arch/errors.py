"""Errors raised while reading GPEN checkpoints."""

from __future__ import annotations


class UnsupportedCheckpointError(ValueError):
    """A file that cannot be used as a GPEN model (or as the detector or parser weights read through
    `loader.read_checkpoint`); the message says what was expected, what was found, and what to do."""


class MissingDependencyError(ImportError):
    """An optional package needed for this kind of file is not installed; the message says what to install."""
