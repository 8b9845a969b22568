"""Carrying out a plan: one HTTP stack (transport, credentials), downloads, the content-addressed
cache, safe unpacking, obtain/place/commit, and the executor that runs a plan's actions.

May import the base modules, :mod:`..spec`, :mod:`..resources` and :mod:`..plan`.
"""
