"""Which resources exist: the known-resource index (OCR-D's resource entries from the bundled index,
OCR-D's user database and installed processors' answers), and the resolution of models.toml's
declarations into wanted resources.

May import the base modules and :mod:`..spec`. Never called "registry": that word means an OCI
registry (:mod:`..oci`).
"""
