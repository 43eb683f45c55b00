"""cbbench: robustness and generalization benchmark for ViTs with and without Context Broadcasting.

Public names are imported lazily so that ``cbbench --help`` and ``cbbench ls``
stay fast (torch and timm load only when a model is needed).
"""
from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "ContextBroadcast": "cbbench.cb",
    "add_context_broadcasting": "cbbench.cb",
    "has_context_broadcasting": "cbbench.cb",
    "load_baseline_into_scaled_cb": "cbbench.models.checkpoint",
    "corrupt": "cbbench.corruptions",
    "evaluate": "cbbench.api",
    "EvalResult": "cbbench.api",
    "load_model": "cbbench.api",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cbbench' has no attribute {name!r}")
