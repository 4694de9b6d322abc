"""Sphinx configuration of the hycnn_sc documentation.

Build from the repository root::

    python -m pip install -e ".[doc]"
    sphinx-build -b html docs docs/_build/html

The package is imported from ``src/`` when it is not installed, so a plain checkout builds
too (torch, scanpy and anndata must be importable: autodoc imports the modules).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if importlib.util.find_spec("hycnn_sc") is None:  # a checkout that is not installed
    sys.path.insert(0, str(ROOT / "src"))

# -- Project ----------------------------------------------------------------------------------
project = "hycnn_sc"
author = "hycnn_sc developers"
copyright = f"{date.today().year}, {author}"
try:
    release = version("hycnn-sc")
except PackageNotFoundError:
    import tomllib

    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
version = ".".join(release.split(".")[:2])

# -- General ----------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.napoleon",
    "myst_nb",
]
if importlib.util.find_spec("sphinx_autodoc_typehints") is not None:
    # After napoleon: the docstrings name parameters without types (scanpy style) and this
    # adds the types from the annotations to napoleon's :param: fields.
    extensions.append("sphinx_autodoc_typehints")

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
templates_path = ["_templates"]

# Cross-references in the docstrings are explicit (:func:, :class:, ...); code is ``literal``.
default_role = None
nitpicky = False

# -- autodoc / autosummary ----------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
# sphinx-autodoc-typehints
typehints_use_signature = False
typehints_use_signature_return = False
always_document_param_types = False
typehints_document_rtype = True

# -- napoleon (numpydoc-style docstrings) ------------------------------------------------------
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_param = True
napoleon_use_rtype = True
napoleon_use_ivar = True

# -- intersphinx ------------------------------------------------------------------------------
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "sklearn": ("https://scikit-learn.org/stable/", None),
}
intersphinx_timeout = 10
if os.environ.get("HYCNN_DOCS_OFFLINE"):
    # No network (e.g. a sandboxed CI job): skip the inventories instead of warning 9 times.
    intersphinx_mapping = {}

# -- MyST / myst-nb ---------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3
# Notebooks are rendered as committed (outputs stripped): docs builds never train a model.
nb_execution_mode = "off"
nb_merge_streams = True

# -- HTML -------------------------------------------------------------------------------------
html_theme = "furo" if importlib.util.find_spec("furo") is not None else "alabaster"
html_title = f"hycnn_sc {release}"
html_static_path: list[str] = []


# -- Members inherited from scikit-learn --------------------------------------------------------
def _skip_sklearn_members(app, what, name, obj, skip, options):
    """Leave out what ConvexRegressor inherits from scikit-learn (``score``, ``set_*_request``).

    Their docstrings point into scikit-learn's own glossary and labels, which do not resolve
    here; they are documented at https://scikit-learn.org.
    """
    module = getattr(obj, "__module__", None) or ""
    if module.startswith("sklearn.") and name != "__init__":
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_sklearn_members)
