"""What is installed, and what to do about it: OCR-D's locations and lookup order, the observation
of installed copies (install records, plausibility), the pure planner, installed listings and import.

May import the base modules, :mod:`..spec` and :mod:`..resources`; never fetches anything.
"""
