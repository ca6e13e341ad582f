"""The edit studio: a local web page to draw an edit on the congealed template
and preview its propagation (``python -m applications.edit_studio``).

``launch`` parses the options and loads the model and the data; ``engine``
holds them and the label and does the work through
``applications.common.propagation``; ``server`` exposes it over HTTP (a Starlette
app); ``static/`` is the page itself (plain HTML, CSS and JavaScript, nothing
fetched from elsewhere).
"""
import importlib

from utils.errors import UserError

STUDIO_MODULES = ('starlette', 'uvicorn')
INSTALL_HINT = "pip install -e '.[studio]'"


def require_studio_dependencies():
    """Raise a UserError saying how to install the optional web dependencies when one is missing."""
    missing = []
    for name in STUDIO_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"the edit studio needs {', '.join(missing)}, which is not installed; install the "
                        f"studio extra from the repository root: {INSTALL_HINT}")
