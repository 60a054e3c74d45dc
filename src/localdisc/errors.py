"""Exceptions that localdisc raises for bad input: each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class LocaldiscError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ImageReadError(LocaldiscError, ValueError):
    """A file could not be read as an image or mask."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ReaderSetupError(ImageReadError):
    """An image could not be read for a reason of this installation or its settings, not of
    the file: pydicom, or a decoder for the file's compression, is not installed; the pixel
    limit is set to no positive integer. ``--skip-bad`` does not skip it: every such file of
    a cohort would be dropped, when installing what the message names reads them all."""


class DatasetError(LocaldiscError, ValueError):
    """A data set folder is incomplete or inconsistent (missing mask, unknown layout, ...)."""


class InputError(LocaldiscError, ValueError):
    """An argument of the Python API is not one the function takes: an image's shape, type or
    range, a config value, a metric's array. A ``ValueError`` too, as it was before."""


class CheckpointError(LocaldiscError):
    """A run directory or checkpoint is missing, corrupt or incompatible."""


class DivergedError(CheckpointError):
    """A training diverged: its weights (in training, or in the checkpoint it would continue
    from) hold NaN or inf, or its loss stayed so. Its run directory cannot go on at these
    settings, which would diverge again; a benchmark lists such a run as skipped and goes on
    with the others."""
