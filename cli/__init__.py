"""kiln: the command line and the glue between kiln.lang, kiln.store, kiln.sandbox and
kiln.registry. Only this package may import all of them."""

__version__ = "0.1.0"
