"""Edit models.toml in place (init, add, remove), keeping the user's comments and layout.

Every edit is validated as a whole manifest before the file is replaced, so a
failed edit leaves the file untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Array, InlineTable, Table

from ..atomic import write_text_atomic
from ..errors import ManifestError, UserInputError
from .manifest import parse_manifest
from .toml import parse_toml

TEMPLATE = """\
# models.toml: the OCR-D models this project needs. `modelsync sync` installs them
# and writes models.lock; commit both. Reference: README.md, "models.toml".

[settings]
# Default location for every processor: cwd | data | system | module, or a directory.
# Left unset, each processor uses its own default (module for ocrd-tesserocr-*, else data).
# location = "data"
# parallel = 4                                   # parallel downloads
# [settings.locations]                           # per-processor location
# ocrd-calamari-recognize = "cwd"
# [settings.mirrors]                             # URL prefix -> replacement prefix
# "https://github.com/" = "https://proxy.example.org/github/"

[processors]
# ocrd-tesserocr-recognize = ["deu.traineddata", "frk.traineddata"]
# ocrd-cis-ocropy-recognize = ["fraktur-jze.pyrnn.gz"]
# ocrd-calamari-recognize = [
#   { name = "my-model", url = "./training/my-model.tar.gz", type = "archive" },
# ]
"""


def init(path: Path, *, force: bool = False) -> None:
    """Write the commented template; refuse to overwrite an existing file unless ``force``."""
    if path.exists() and not force:
        raise UserInputError(f"{path} already exists; use `modelsync add` to declare models, or --force to "
                             "replace it with the template")
    write_text_atomic(path, TEMPLATE)


def _load(path: Path) -> tuple[str, tomlkit.TOMLDocument]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist; create it with `modelsync init`") from None
    parse_toml(text, path)  # precise syntax errors first
    parse_manifest(text, path)  # refuse to edit a file that is already invalid
    return text, tomlkit.parse(text)


def _save(path: Path, doc: tomlkit.TOMLDocument) -> None:
    text = tomlkit.dumps(doc)
    parse_manifest(text, path)  # the edit must leave a valid manifest
    write_text_atomic(path, text)


def _processors(doc: tomlkit.TOMLDocument) -> Table:
    if "processors" not in doc:
        doc.add("processors", tomlkit.table())
    return doc["processors"]


def _item_name(item: Any) -> str | None:
    if isinstance(item, str):
        return str(item)
    if isinstance(item, (dict, InlineTable)):
        return str(item.get("name")) if item.get("name") is not None else None
    return None


def add(path: Path, processor: str, specs: list[dict[str, Any]], *, replace: bool = True) -> list[str]:
    """Declare models for a processor (a plain name stays a string); return names newly added.

    An existing declaration of the same name is updated (``replace``) or left alone.
    """
    _, doc = _load(path)
    procs = _processors(doc)
    if processor not in procs:
        arr = tomlkit.array()
        procs.add(processor, arr)
    arr = procs[processor]
    if not isinstance(arr, Array):
        raise ManifestError(f"{path}: processors.{processor} is not an array; edit it by hand")
    existing = {_item_name(i): n for n, i in enumerate(arr)}
    added = []
    for spec in specs:
        name = spec["name"]
        extra = {k: v for k, v in spec.items() if v is not None and k != "name"}
        value: Any = name
        if extra:
            value = tomlkit.inline_table()
            value.update({"name": name, **extra})
        if name in existing:
            if replace:
                arr[existing[name]] = value  # re-adding with options updates the entry
        else:
            arr.append(value)
            added.append(name)
    if len(arr) > 2:
        arr.multiline(True)
    _save(path, doc)
    return added


def remove(path: Path, processor: str, names: list[str]) -> list[str]:
    """Remove models (or, with no names, the whole processor); return what was removed."""
    _, doc = _load(path)
    procs = _processors(doc)
    if processor not in procs:
        raise UserInputError(f"{processor} is not declared in {path}")
    if not names:
        del procs[processor]
        _save(path, doc)
        return ["*all*"]
    arr = procs[processor]
    removed = []
    for name in names:
        idx = next((n for n, i in enumerate(arr) if _item_name(i) == name), None)
        if idx is None:
            raise UserInputError(f"{processor} has no model {name!r} in {path}")
        del arr[idx]
        removed.append(name)
    _save(path, doc)
    return removed
