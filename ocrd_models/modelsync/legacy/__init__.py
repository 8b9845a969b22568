"""Legacy models: the restricted pickle loader, pyrnn models, kraken's HDF5 layout, model formats
(``inspect``) and the conversion of installed pyrnn models during ``sync``.

May import the base modules, :mod:`..resources` and :mod:`..plan` (install records).
"""
