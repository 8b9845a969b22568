"""modelsync: a declarative, lockfile-driven installer for the model files of OCR-D processors."""

__version__ = "0.1.0"  # the one source of the version: pyproject.toml reads it from here (hatch)
