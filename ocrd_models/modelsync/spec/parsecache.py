"""A cache of TOML texts parsed and validated before, on this machine.

tomllib is pure Python and pydantic builds its validators slowly: a 10 000-model manifest and its
lock take seconds to parse and validate, their JSON form milliseconds. Entries are keyed by the
SHA-256 of the text (and, for validation verdicts, of the checking code), so a changed file or a
changed schema never trusts a stale entry. Nothing is written before the command succeeds
(:func:`flush`); a failing command writes nothing. Off until :func:`enable` names a directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic

# The cache's directory (None: no cache); set by :func:`enable`.
PARSE_CACHE_DIR: Path | None = None
_PARSE_CACHE_MIN = 64 * 1024  # small files parse faster than a cache lookup


def enable(directory: Path | None) -> None:
    """Use the cache under ``directory`` (None: none) and forget notes of an earlier command in this
    process (library use, tests)."""
    global PARSE_CACHE_DIR
    PARSE_CACHE_DIR = directory
    discard()


def parsed_path(text: str) -> Path | None:
    """Where the parsed form of a large ``text`` is kept (None: no cache, or a text parsed faster than
    looked up)."""
    if PARSE_CACHE_DIR is None or len(text) < _PARSE_CACHE_MIN:
        return None
    return PARSE_CACHE_DIR / "parsed" / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()}.json"


def load(path: Path) -> Any:
    """The JSON kept at ``path``, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_PENDING: dict[Path, dict[str, Any]] = {}


def discard() -> None:
    """Forget the notes of :func:`remember` (a command failed: nothing of it is stored)."""
    _PENDING.clear()


def flush() -> None:
    """Store what a command that succeeded parsed (large TOML texts) and validated (manifests, locks)."""
    while _PENDING:
        path, data = _PENDING.popitem()
        _store_parsed(path, data)


def remember(marker: Path, data: dict[str, Any]) -> None:
    """Note that a text passed validation; written only once the command succeeds (:func:`flush`),
    so a failing command changes nothing on disk."""
    _PENDING[marker] = data


def marker(text: str, checkers: tuple[str, ...], min_size: int = 0) -> Path | None:
    """Where the cache notes that ``text`` passed the checks of the modules at ``checkers`` (None: no
    cache, or a text below ``min_size``, checked faster than looked up). The checking code is part of
    the key: a changed schema never trusts a stale verdict."""
    if PARSE_CACHE_DIR is None or len(text) < min_size:
        return None
    h = hashlib.sha256()
    for checker in checkers:
        h.update(Path(checker).read_bytes())
    h.update(text.encode("utf-8"))
    return PARSE_CACHE_DIR / "validated" / f"{h.hexdigest()}.json"


def _store_parsed(cache: Path, data: dict[str, Any]) -> None:
    try:
        # Only JSON-exact data is cached (TOML dates would not round-trip): compare after a trip.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if json.loads(text) == data:
            write_text_atomic(cache, text, private=True)  # a copy of models.toml: URLs may carry tokens
    except (OSError, TypeError, ValueError):
        pass
