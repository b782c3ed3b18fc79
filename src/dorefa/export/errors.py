"""The one error of :mod:`dorefa.export`."""


class ExportError(ValueError):
    """The model cannot be run by the bit runtime (says what is unsupported and why)."""
