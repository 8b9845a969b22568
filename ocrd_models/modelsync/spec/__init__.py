"""The project's two files: ``models.toml`` (what is wanted) and ``models.lock`` (what was installed).

Owns their schema, reading (bounded, pre-scanned TOML), validation and in-place editing, and the
cache of validated parses. May import only the base modules (errors, atomic, failpoints, config).
"""
