"""``python -m kiln``: the same entry as the ``kiln`` console script (``main.cli``)."""

from .main import cli

cli()
