"""The one error of :mod:`dorefa.exporter`."""


class ExportError(ValueError):
    """The model cannot be run by the bit runtime (says what is unsupported and why)."""
