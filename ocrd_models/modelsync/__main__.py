"""``python -m ocrd_models.modelsync``: the same as the ``modelsync`` command."""

from .cli import main

main()
