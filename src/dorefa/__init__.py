"""dorefa: DoReFa-Net (arXiv:1606.06160) in PyTorch, and a torch-free popcount runtime.

Public names are re-exported lazily so that ``import dorefa.runtime`` never imports torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Bits": "dorefa.bits",
    "quantize_k": "dorefa.quantizers",
    "quantize_weight": "dorefa.quantizers",
    "quantize_activation": "dorefa.quantizers",
    "quantize_gradient": "dorefa.quantizers",
    "GradQuant": "dorefa.quantizers",
    "quantize_model": "dorefa.nn",
    "create_model": "dorefa.models",
    "list_models": "dorefa.models",
    "export": "dorefa.exporter",
    "summary": "dorefa.model_summary",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dorefa' has no attribute {name!r}")


def __dir__():
    return __all__
