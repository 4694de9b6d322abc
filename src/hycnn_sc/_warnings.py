"""Warnings that point at the user's line, however deep inside the package they are raised."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _in_package(filename: str) -> bool:
    # pseudo-files (<string>, <doctest ...>, <frozen ...>) are never the package's
    return not filename.startswith("<") and os.path.abspath(filename).startswith(_PACKAGE_DIR)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` pointing at the user's line.

    The user's line is where code outside the package called into it: the caller of the
    outermost ``hycnn_sc`` frame on the stack, so a call that passes through another
    library's frames (a decorator, a callback) and back into the package still points at the
    user, and a warning raised ten calls deep reads as raised by the user's call.

    Parameters
    ----------
    message
        The warning's text: what happened and what to do about it.
    category
        The warning class (``UserWarning``, ``RuntimeWarning``, ``FutureWarning``, ...).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_user("check this", RuntimeWarning)
    >>> caught[0].category.__name__, str(caught[0].message)
    ('RuntimeWarning', 'check this')
    """
    filenames = []
    frame = sys._getframe(1)  # the package function that warns: stacklevel 2
    while frame is not None:
        filenames.append(frame.f_code.co_filename)
        frame = frame.f_back
    # frame i is at stacklevel i + 2; the user's frame is the one after the outermost package
    # frame (the direct caller when called from outside the package)
    outermost = max((i for i, name in enumerate(filenames) if _in_package(name)), default=-1)
    warnings.warn(message, category, stacklevel=outermost + 3)
