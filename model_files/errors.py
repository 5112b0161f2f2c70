"""The errors every model loader raises (GPEN, detector, parser), kept where importing them costs nothing: the
command line catches them before it imports torch."""

from __future__ import annotations


class UnsupportedCheckpointError(ValueError):
    """A file that cannot be used as the model asked for (GPEN, or the detector or parser weights); the message
    says what was expected, what was found, and what to do."""


class MissingDependencyError(ImportError):
    """An optional package needed for this kind of file is not installed; the message says what to install."""
