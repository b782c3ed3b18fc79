"""The one error of :mod:`dorefa.exporter`, and how a failed write becomes one."""

from __future__ import annotations

import os

from ..fileio import WriteError


class ExportError(ValueError):
    """The model cannot be run by the bit runtime (says what is unsupported and why)."""


def write_failure(path: str | os.PathLike, exc: OSError) -> ExportError:
    """The ExportError for an output file that could not be written: atomic_write's own
    message where it made one, else the OS's reason (a folder in the way, a read-only or full
    disk, ...)."""
    if isinstance(exc, WriteError):
        return ExportError(str(exc))
    return ExportError(
        f"cannot write {path}: {exc.strerror or exc}; give a writable file path with -o"
    )
