"""Automatic pyrnn -> HDF5 conversion during ``sync`` (kraken's old autoconversion, made safe).

Which models: ``convert = true|false`` on a model in models.toml, else ``[settings]
convert_pyrnn`` for names ending in ``.pyrnn``, ``.pyrnn.gz`` or ``.pyrnn.bz2``; ``sync
--disable-autoconversion`` switches it off for one run. Where: our data directory,
``<data>/ocrd-modelsync/converted/<source sha256>/<name minus its last extension>.hdf5``
(kraken's naming, but keyed by the source's bytes: a changed source converts again and two
sources with one file name never collide). The converted file's own SHA-256 goes into
models.lock; it is written to a temp name, hashed and checked, then renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..digest import StatSig, sha256_file
from ..errors import ChecksumMismatch, ModelsyncError, UnsafeModel, UserInputError, filesystem_error
from ..plan.records import InstallRecord, RecordStore
from ..resources.entry import is_pyrnn_name

if TYPE_CHECKING:
    from ..install.executor import Outcome
    from ..resources.resolve import Wanted
    from ..spec.lockfile import LockEntry


def wants_conversion(name: str, type_: str, per_model: bool | None, default: bool) -> bool:
    """The per-model choice if given, else the default for pyrnn-named files."""
    if per_model is not None:
        if per_model and type_ != "file":
            raise UserInputError(f"{name}: convert = true needs a single-file model (type = \"file\"), "
                                 f"not a {type_}")
        return per_model
    return default and type_ == "file" and is_pyrnn_name(name)


def converted_name(name: str) -> str:
    """kraken's rule: strip only the last extension, add ``.hdf5`` (fraktur.pyrnn.gz -> fraktur.pyrnn.hdf5)."""
    return os.path.splitext(name)[0] + ".hdf5"


@dataclass
class Converter:
    """Converts installed pyrnn models into ``root`` and remembers them in the install records."""

    root: Path  # <data>/ocrd-modelsync/converted
    records: RecordStore

    def path_for(self, source_sha256: str, name: str) -> Path:
        """Where the conversion of the source with this SHA-256 lives."""
        return self.root / source_sha256 / converted_name(name)

    def existing(self, source_sha256: str | None, name: str) -> Path | None:
        """The converted file if it exists (for status and resolve)."""
        if not source_sha256:
            return None
        path = self.path_for(source_sha256, name)
        return path if path.is_file() else None

    def ensure(self, processor: str, name: str, source: Path, source_sha256: str,
               expected: str | None) -> tuple[Path, str]:
        """The converted file and its SHA-256: reused when present and right, converted otherwise.

        ``expected`` (from models.lock) must match a fresh conversion too, or ChecksumMismatch.
        """
        target = self.path_for(source_sha256, name)
        rec = self.records.get(target)
        if rec is not None and rec.is_fresh() and (expected is None or rec.digest == expected):
            return target, rec.digest
        if target.is_file():
            digest = self._digest(target)
            if digest == expected or (expected is None and self._usable(target)):
                self._remember(processor, name, target, digest)
                return target, digest
        digest = self._convert(source, target, expected, f"{processor} {name}")
        self._remember(processor, name, target, digest)
        return target, digest

    @staticmethod
    def _usable(target: Path) -> bool:
        """A file found at a conversion path without a record is adopted only if it reads as a pyrnn-bidi model.

        (A damaged or foreign file there is converted over, never locked as if it were ours.)
        """
        from . import hdf5model

        try:
            hdf5model.read(target)
        except UnsafeModel:
            return False
        return True

    @staticmethod
    def _digest(path: Path) -> str:
        try:
            return sha256_file(path)
        except OSError as err:
            raise filesystem_error(err, path, "read") from None

    def _convert(self, source: Path, target: Path, expected: str | None, what: str) -> str:
        from . import hdf5model, pyrnn

        model = pyrnn.load_model(source)
        result: dict[str, str] = {}

        def check(temp: Path) -> None:
            result["sha"] = digest = sha256_file(temp)
            if expected is not None and digest != expected:
                raise ChecksumMismatch(
                    f"{what} (converted HDF5)", expected, digest,
                    "The conversion gave other bytes than models.lock records (another numpy/h5py version?). "
                    "Nothing was replaced. Re-lock it with `modelsync sync --upgrade-model "
                    f"{what.replace(' ', ':', 1)}`.")

        hdf5model.write(model, target, before_rename=check)
        return result["sha"]

    def _remember(self, processor: str, name: str, target: Path, digest: str) -> None:
        st = target.stat()
        self.records.put(InstallRecord(str(target), processor, name, digest, False, {"": StatSig.of(st)}))


@dataclass(frozen=True)
class ConversionPolicy:
    """Which installed models a run converts, and where their converted files are.

    ``run_enabled`` is False for a run with ``--disable-autoconversion``; ``default`` is ``[settings]
    convert_pyrnn``; with ``frozen`` the lock decides (exactly what it says was converted).
    """

    converter: Converter
    default: bool
    run_enabled: bool = True
    frozen: bool = False

    def wants(self, w: "Wanted") -> bool:
        """Whether ``w`` is converted to kraken's HDF5 by models.toml (regardless of this run's switch)."""
        return wants_conversion(w.name, w.type, w.convert, self.default)

    def converted_path(self, entry: "LockEntry | None") -> Path | None:
        """The converted HDF5 a processor should use instead of the locked model, if conversion is on."""
        if not self.run_enabled or entry is None or not entry.converted_sha256:
            return None
        return self.converter.existing(entry.sha256, entry.name)

    def apply(self, outcomes: "list[Outcome]", place: bool = True) -> None:
        """Convert the installed pyrnn models that ask for it and record the HDF5's hash in their lock entry
        (``place`` False: only carry known hashes over, as ``lock`` does). A failed conversion fails that
        resource; the model itself stays installed and locked."""
        for o in outcomes:
            w, entry = o.action.wanted, o.entry
            if w is None or entry is None or o.error is not None:
                continue
            prev = o.action.expect.locked if o.action.expect else None
            known = prev.converted_sha256 if prev and prev.sha256 == entry.sha256 else None
            if self.frozen:  # the lock decides: convert exactly what it says was converted
                wanted = known is not None and self.run_enabled
            else:
                try:
                    wanted = self.run_enabled and self.wants(w)
                except UserInputError as err:
                    o.error = err
                    continue
            if not wanted:
                # Switched off for this run only: the lock keeps what it knew. Off in models.toml: dropped.
                o.entry = replace(entry, converted_sha256=known if not self.run_enabled else None)
                continue
            if not place or o.path is None or not entry.sha256:
                o.entry = replace(entry, converted_sha256=known)
                continue
            try:
                target, digest = self.converter.ensure(w.processor, w.name, o.path, entry.sha256, known)
            except ModelsyncError as err:
                o.error = err
                continue
            o.entry = replace(entry, converted_sha256=digest)
            if digest != known:
                o.converted = target
