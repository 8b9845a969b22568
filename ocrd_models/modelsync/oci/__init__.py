"""OCI registries (the only thing called "registry" here): the client, ``push`` of locked
artifacts, and fetching them by digest during ``sync``.

May import the base modules, :mod:`..spec` and :mod:`..install` (its HTTP stack and downloads).
"""
