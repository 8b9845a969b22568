"""modelsync: a declarative, lockfile-driven installer for the model files of OCR-D processors.

The Python API, for programs that want models (an OCR-D processor, a workflow engine)::

    from ocrd_models.modelsync import open_project, SyncFailed

    project = open_project()                  # the nearest models.toml, found as the CLI finds it
    plan = project.plan()                     # what sync would do, action by action (changes nothing)
    try:
        result = project.sync()               # install, verify, write models.lock
    except SyncFailed as err:                 # the others were installed; err.failures says why not
        ...
    path = project.resolve_model("ocrd-tesserocr-recognize", "deu.traineddata")["path"]

Every name in ``__all__`` is the supported surface; errors carry the CLI's exit code as
``exit_code``. Names are loaded on first use: importing this package costs nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"  # the one source of the version: pyproject.toml reads it from here (hatch)

_PUBLIC = {
    "open_project": "project", "find_manifest": "project", "Project": "project", "SyncResult": "project",
    "Flags": "runconfig", "RunConfig": "runconfig",
    "StatusRow": "plan.reports", "VerifyRow": "plan.reports", "Plan": "plan.planner", "Action": "plan.planner",
    "Progress": "progress", "NullProgress": "progress",
    **{name: "errors" for name in (
        "ModelsyncError", "UserInputError", "ManifestError", "LockfileError", "UnknownNameError", "LocationError",
        "NetworkError", "ChecksumMismatch", "ShadowedModel", "LockStale", "OfflineMissing", "ChangesPending",
        "InstallError", "UnsafeArchive", "UnsafeModel", "MissingExtra", "SyncFailed", "Failure")},
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
