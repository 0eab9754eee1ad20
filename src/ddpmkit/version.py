"""ddpmkit's version, in a module that imports nothing, so that any layer may read it (formats/ writes it into
exported files) without importing the package's ``__init__``, which imports every layer."""
__version__ = "0.1.0"  # = pyproject.toml's [project] version
