"""Plots of fitted maps: they read what :mod:`hycnn_sc.tl` stored and never retrain.

- :func:`transport` — control, observed and predicted cells on one embedding.
- :func:`training` — minimax losses and selection energy of the stored training history.
- :func:`response` — predicted vs observed per-gene mean change.
- :func:`evaluation` — the table of :func:`hycnn_sc.tl.evaluate` as grouped bars.

All follow scanpy's conventions: ``ax=`` draws into given Axes, ``show=None`` follows
:attr:`scanpy.settings.autoshow`, ``return_fig=True`` returns the Figure and ``save=``
writes to :attr:`scanpy.settings.figdir`.
"""

from ._evaluation import evaluation
from ._response import response
from ._training import training
from ._transport import transport

__all__ = ["evaluation", "response", "training", "transport"]
