"""hycnn_sc: optimal-transport maps between cell populations with Hyper Input Convex Neural Networks."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hycnn-sc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = ("models", "metrics", "datasets", "tl", "pl")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str):
    # Submodules load on first use, so `import hycnn_sc.models` never pulls in scanpy.
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hycnn_sc' has no attribute {name!r}")
