"""The one exception every data loader raises for a missing, corrupt or unusable data file."""

from __future__ import annotations


class DataError(ValueError):
    """A data file is missing, corrupt or not in the expected format.

    The message is one line that names the file and says what was expected, so that a
    user can act on it without reading a numpy traceback.
    """
