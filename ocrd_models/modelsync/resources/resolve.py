"""Turn the manifest's declarations into concrete wanted resources, using the resource index."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..urls import redact
from ..errors import UnknownNameError, UserInputError
from ..spec.manifest import LOCATION_KINDS, Manifest, ModelSpec
from .index import ResourceIndex, canonical_processor, did_you_mean
from .entry import ResourceEntry, is_pyrnn_name


@dataclass(frozen=True)
class Wanted:
    """A resource the project wants, fully resolved (registry entry + manifest overrides)."""

    processor: str  # canonical (ocrd-tesserocr-* -> ocrd-tesserocr-recognize)
    name: str
    url: str
    type: str
    path_in_archive: str
    location: str  # a location kind or a directory path, as declared
    sha256: str | None  # pinned in the manifest
    source: str  # registry source that supplied the entry
    size: int | None = None
    description: str = ""
    convert: bool | None = None  # the model's own ``convert`` choice (None: the settings default)

    @property
    def key(self) -> tuple[str, str]:
        """(processor, name)."""
        return (self.processor, self.name)

    def declaration(self) -> tuple:
        """Comparable with :meth:`LockEntry.declaration` (the URL without credentials, as locked)."""
        return (redact(self.url), self.type, self.path_in_archive, self.location)


def _location(manifest: Manifest, spec: ModelSpec | None, exe: str, default: str,
              allowed: list[str] | None = None) -> str:
    """The location of one declaration: the model's, the processor's, ``[settings] location``, the tool's.

    A tool that declares ``resource_locations`` (ocrd-tesserocr-*: only ``module``, Tesseract's
    tessdata dir) is looked for nowhere else by OCR-D: a location it names explicitly elsewhere is
    refused; the project-wide ``[settings] location`` does not apply to it.
    """
    s = manifest.settings
    explicit = (spec.location if spec is not None else None) or s.locations.get(exe) \
        or s.locations.get(canonical_processor(exe))
    if explicit and allowed and explicit not in allowed:
        kind = f"location {explicit!r}" if explicit in LOCATION_KINDS else f"the directory {explicit!r}"
        raise UserInputError(
            f"{exe}: OCR-D looks for its resources only in its {', '.join(allowed)} location (the tool's "
            f"resource_locations), so {kind} would never be found by the processor. Remove the location"
            + (" and set TESSDATA_PREFIX to Tesseract's tessdata directory if it is not the processor's own."
               if exe.startswith("ocrd-tesserocr-") else "."))
    if explicit:
        return explicit
    if s.location and (not allowed or s.location in allowed):
        return s.location
    return default


def _from_entry(entry: ResourceEntry, spec: ModelSpec | None, location: str) -> Wanted:
    return Wanted(
        processor=canonical_processor(entry.processor),
        name=entry.name,
        url=entry.url,
        type=(spec.type if spec and spec.type else entry.type),
        path_in_archive=(spec.path_in_archive if spec and spec.path_in_archive else entry.path_in_archive),
        location=location,
        sha256=spec.sha256 if spec else None,
        source=entry.source,
        size=entry.size,
        description=entry.description,
        convert=spec.convert if spec else None,
    )


def unknown_processor(index: ResourceIndex, exe: str) -> UnknownNameError:
    """The error for a processor no source knows."""
    return UnknownNameError(
        f"unknown processor {exe!r}: neither the bundled index, OCR-D's user database nor an "
        f"installed processor knows it.{did_you_mean(index.suggest_processors(exe))} "
        "To use a processor we do not know, give each model a url in models.toml."
    )


def unknown_name(index: ResourceIndex, exe: str, name: str) -> UnknownNameError:
    """The error for a model name the processor's known resources lack."""
    return UnknownNameError(
        f"unknown model {name!r} for {exe}.{did_you_mean(index.suggest_names(exe, name))} "
        f"`modelsync available {exe}` lists the known ones; a model of your own needs a url "
        f"(e.g. {{ name = \"{name}\", url = \"https://...\" }})."
    )


def resolve(manifest: Manifest, index: ResourceIndex, default_location) -> list[Wanted]:
    """Resolve every declaration; ``default_location(processor)`` gives the tool default.

    Raises :class:`UnknownNameError` (with suggestions) for names no source knows.
    """
    wanted: dict[tuple[str, str], Wanted] = {}
    errors: list[UserInputError] = []
    for exe, specs in manifest.processors.items():
        default = default_location(exe)
        allowed = index.resource_locations(exe)
        for spec in specs:
            try:
                loc = _location(manifest, spec, exe, default, allowed)
                items = _resolve_one(exe, spec, loc, index)
            except UserInputError as err:
                errors.append(err)
                continue
            for w in items:
                prev = wanted.get(w.key)
                if prev is not None and prev != w:
                    errors.append(UserInputError(f"{w.processor} {w.name} is declared twice with different settings "
                                                 f"(ocrd-tesserocr-* processors share one set of resources)"))
                wanted[w.key] = w
    if errors:
        raise errors[0] if len(errors) == 1 else UserInputError(
            "models.toml has problems:\n" + "\n".join("  " + str(e).replace("\n", "\n  ") for e in errors))
    return sorted(wanted.values(), key=lambda w: w.key)


def _resolve_one(exe: str, spec: ModelSpec, loc: str, index: ResourceIndex) -> list[Wanted]:
    if spec.is_wildcard:
        if not index.knows_processor(exe):
            raise unknown_processor(index, exe)
        # ``convert`` on "*" applies to the pyrnn models among them (converting a traineddata makes no sense)
        return [replace(_from_entry(e, None, loc), convert=spec.convert if is_pyrnn_name(e.name) else None)
                for e in index.resources(exe)]
    if spec.url:
        entry = ResourceEntry(processor=exe, name=spec.name, url=spec.url, description=spec.description or "",
                              type=spec.type or "file", path_in_archive=spec.path_in_archive or ".",
                              source="manifest")
        return [_from_entry(entry, spec, loc)]
    entry = index.lookup(exe, spec.name)
    if entry is None:
        if not index.knows_processor(exe):
            raise unknown_processor(index, exe)
        raise unknown_name(index, exe, spec.name)
    return [_from_entry(entry, spec, loc)]
