"""Docstring fragments shared by several public functions (scanpy's ``_doc_params`` idea).

A docstring names a fragment as ``{fragment_name}`` alone on its line; :func:`doc_params`
replaces it with the fragment, indented like the placeholder. Only the named placeholders are
touched, so other braces in a docstring need no escaping.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: ``ax``, ``show``, ``return_fig`` and ``save`` of every ``pl`` function; ``{name}`` is the
#: figure's file stem.
PLOT_ARGUMENTS = """\
ax
    Draw into this Axes instead of a new figure.
show
    Show the figure; ``None`` follows :attr:`scanpy.settings.autoshow`.
return_fig
    Return the Figure (and do not show it).
save
    As in scanpy: ``True`` or a filename suffix writes ``{name}{{suffix}}`` to
    :attr:`scanpy.settings.figdir`."""

#: The Returns section of every ``pl`` function.
PLOT_RETURNS = """\
Returns
-------
The Figure with ``return_fig=True``; else the Axes when ``show=False``; else ``None``."""

#: The start of an Examples section that fits its own maps: the shipped Kang cells with PCA.
EXAMPLE_DATA = """\
>>> import scanpy as sc
>>> import hycnn_sc as hs
>>> adata = hs.datasets.kang_ifnb1k()
>>> sc.pp.normalize_total(adata)
>>> sc.pp.log1p(adata)
>>> sc.pp.pca(adata, n_comps=20)"""

#: The start of an Examples section that needs fitted maps under ``adata.uns["hycnn"]``.
EXAMPLE_FITTED = EXAMPLE_DATA + """
>>> hs.tl.fit_transport(adata, groupby="condition", source="control",
...                     n_iters=20, hidden=(8,), warm_start_iters=20)"""


def plot_arguments(name: str) -> str:
    """:data:`PLOT_ARGUMENTS` for a plot whose saved file is ``{name}{suffix}``."""
    return PLOT_ARGUMENTS.format(name=name)


def doc_params(**fragments: str) -> Callable[[F], F]:
    """Fill ``{name}`` placeholder lines of the decorated object's docstring.

    Parameters
    ----------
    **fragments
        Placeholder name → text (unindented; the placeholder's indentation is applied).

    Returns
    -------
    A decorator that rewrites ``__doc__`` and returns the object itself.

    Raises
    ------
    ValueError
        A fragment's placeholder is missing from the docstring (a typo would otherwise leave
        the text out silently).

    Examples
    --------
    >>> @doc_params(extra="b\\n    more")
    ... def f():
    ...     '''Summary.
    ...
    ...     a
    ...     {extra}
    ...     '''
    >>> print(f.__doc__.strip())
    Summary.
    <BLANKLINE>
        a
        b
            more
    """

    def decorate(obj: F) -> F:
        doc = obj.__doc__ or ""
        for name, text in fragments.items():
            pattern = re.compile(rf"^([ \t]*)\{{{name}\}}[ \t]*$", re.MULTILINE)
            if not pattern.search(doc):
                raise ValueError(f"{obj.__qualname__}'s docstring has no line '{{{name}}}'.")
            doc = pattern.sub(lambda m, t=text: textwrap.indent(t, m.group(1)), doc)
        obj.__doc__ = doc
        return obj

    return decorate
