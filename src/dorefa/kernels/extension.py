"""Loads the compiled kernels, ``dorefa._kernels`` (C++ in ``dorefa/csrc``).

``native`` is the module, or None when it failed to import (``native_error`` says why): then
only the NumPy ``'reference'`` kernel exists. ``DOREFA_KERNELS_EXTENSION=/path/to/_kernels*.so``
loads that file instead (``make asan`` uses it to test a sanitizer build of the same sources).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType


def _load() -> ModuleType:
    path = os.environ.get("DOREFA_KERNELS_EXTENSION")
    if not path:
        from dorefa import _kernels

        return _kernels
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("dorefa._kernels", path)
    spec = importlib.util.spec_from_file_location("dorefa._kernels", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["dorefa._kernels"] = module
    return module


native: ModuleType | None
native_error: ImportError | None
try:
    native = _load()
except ImportError as _err:  # not built: only the reference kernel exists
    native, native_error = None, _err
else:
    native_error = None
