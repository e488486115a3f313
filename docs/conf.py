"""Sphinx configuration of cnorm's documentation site.

Build: ``pip install -e ".[docs]"`` then ``sphinx-build -W -n docs docs/_build/html``
(``-W``: warnings are errors; ``-n``: every cross-reference must resolve). The
build also fails when a public name of cnorm has no API entry (``_check_api``
warns, and -W makes that an error).
"""
import importlib

import cnorm

project = "cnorm"
author = "the cnorm developers"
copyright = "2026, the cnorm developers"
release = cnorm.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"cnorm {release}"
html_static_path = []

# numpydoc renders the docstrings; the API pages list members themselves.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autosummary_generate = False

# Names that docstrings mention in prose types ("ndarray", "array_like") and
# that no inventory here defines (the build is offline: no intersphinx).
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|dask|torch|keras|onnx)\..*"),
]

# Every public name, and the module that documents it. The build fails (-W) if
# one has no entry in the API reference or no docstring (see _check_api). A new
# public module (an optional integration, say) is one more line here, None
# meaning its __all__, and one more page under docs/api/ listed in api/index.md.
PUBLIC = {
    "cnorm": list(cnorm.__all__),
    "cnorm.reference": None,  # its __all__
    "cnorm.dask": None,
    "cnorm.torch": None,
}


def _public_names():
    names = []
    for module_name, listed in PUBLIC.items():
        if listed is None:
            listed = importlib.import_module(module_name).__all__
        names += [f"{module_name}.{name}" for name in listed if not name.startswith("__")]
    return names


def _check_api(app, env):
    """A warning (an error under -W) for each public name the API pages lack."""
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    documented = set(env.get_domain("py").objects)
    for name in _public_names():
        if name not in documented:
            logger.warning("public name %s has no entry in the API reference (docs/api/)", name)
        for undocumented in _without_docstring(name):
            logger.warning("public name %s has no docstring", undocumented)


def _without_docstring(name):
    """`name`, or its public methods and properties, that have no docstring."""
    module_name, _, attribute = name.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attribute)
    if not callable(obj) and not isinstance(obj, type):
        return []  # a constant such as __version__, documented on its page
    missing = [] if (obj.__doc__ or "").strip() else [name]
    if isinstance(obj, type):
        for member, value in vars(obj).items():
            if member.startswith("_") and member != "__call__":
                continue
            function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            if callable(function) or isinstance(function, property):
                if not (function.__doc__ or "").strip():
                    missing.append(f"{name}.{member}")
    return missing


def setup(app):
    app.connect("env-check-consistency", _check_api)
