"""OCR-D's resource locations, their directories and the lookup order.

| location | directory for processor ``ocrd-foo``                        |
|----------|-------------------------------------------------------------|
| cwd      | the project directory (where models.toml lives)             |
| data     | ``$XDG_DATA_HOME/ocrd-resources/ocrd-foo``                  |
| system   | ``/usr/local/share/ocrd-resources/ocrd-foo``                |
| module   | ``ocrd-foo --dump-module-dir``; for ocrd-tesserocr-* the    |
|          | tessdata dir (``$TESSDATA_PREFIX``, else the processor's)   |

Lookup order (first hit wins): cwd, ``$OCRD_FOO_PATH`` entries, data, system, module;
restricted to the tool's ``resource_locations`` when it declares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..resources import processors
from ..errors import LocationError
from ..resources.index import ResourceIndex, canonical_processor
from ..config import TESSEROCR_RECOGNIZE, Environment

@dataclass(frozen=True)
class Candidate:
    """One directory a processor looks into, labelled with its location kind."""

    kind: str  # cwd | path | data | system | module | dir (explicit directory)
    directory: Path

    @property
    def label(self) -> str:
        """``data``, or ``path:/x`` for an ``$OCRD_FOO_PATH`` entry, ``dir:/x`` for explicit dirs."""
        return f"{self.kind}:{self.directory}" if self.kind in ("path", "dir") else self.kind


@dataclass
class Locations:
    """Resolves location directories for one project on this machine."""

    env: Environment
    project_dir: Path
    index: ResourceIndex
    # False (--frozen): the lookup scan never runs a processor; a module *target* still does.
    ask_processors_for_lookup: bool = True
    _module_dirs: dict[str, Path | None] = field(default_factory=dict)
    _lookups: dict[str, list[Candidate]] = field(default_factory=dict)
    _targets: dict[tuple[str, str], Candidate] = field(default_factory=dict)

    def default_location(self, processor: str) -> str:
        """First of the tool's ``resource_locations``, else ``data``."""
        locs = self.index.resource_locations(processor)
        return locs[0] if locs else "data"

    def module_dir(self, processor: str, *, required: bool = True) -> Path | None:
        """The processor's module dir; for ocrd-tesserocr-* Tesseract's tessdata dir."""
        proc = canonical_processor(processor)
        if proc not in self._module_dirs:
            found: Path | None = None
            if proc == TESSEROCR_RECOGNIZE and self.env.tessdata_prefix:
                found = self.env.tessdata_prefix
            else:
                found = processors.module_dir(proc, self.env)
            self._module_dirs[proc] = found
        found = self._module_dirs[proc]
        if found is None and required:
            hint = ("set TESSDATA_PREFIX to Tesseract's tessdata directory, or install ocrd_tesserocr"
                    if proc == TESSEROCR_RECOGNIZE else
                    f"install {proc} so that `{proc} --dump-module-dir` answers")
            raise LocationError(
                f"cannot find the 'module' location of {proc}: the processor is not installed on PATH. "
                f"Either {hint}, or choose another location for it in models.toml "
                f"([settings.locations] {proc} = \"data\")."
            )
        return found

    def directory(self, location: str, processor: str) -> Path:
        """The directory where ``location`` puts resources of ``processor``."""
        proc = canonical_processor(processor)
        if location == "cwd":
            return self.project_dir
        if location == "data":
            return self.env.ocrd_data_dir / proc
        if location == "system":
            return self.env.ocrd_system_dir / proc
        if location == "module":
            path = self.module_dir(proc)
            assert path is not None
            return path
        path = Path(location).expanduser()
        return path if path.is_absolute() else (self.project_dir / path)

    def lookup(self, processor: str) -> list[Candidate]:
        """Directories in OCR-D's lookup order; the module dir only if it can be found (memoized)."""
        proc = canonical_processor(processor)
        if proc not in self._lookups:
            self._lookups[proc] = self._lookup(proc)
        return self._lookups[proc]

    def _lookup(self, proc: str) -> list[Candidate]:
        allowed = set(self.index.resource_locations(proc)) or {"cwd", "data", "system", "module"}
        out: list[Candidate] = []
        if "cwd" in allowed:
            out.append(Candidate("cwd", self.project_dir))
            out.extend(Candidate("path", p) for p in self.env.processor_path_var(proc))
        if "data" in allowed:
            out.append(Candidate("data", self.env.ocrd_data_dir / proc))
        if "system" in allowed:
            out.append(Candidate("system", self.env.ocrd_system_dir / proc))
        if "module" in allowed and (self.ask_processors_for_lookup or proc in self._module_dirs
                                    or (proc == TESSEROCR_RECOGNIZE and self.env.tessdata_prefix)):
            mod = self.module_dir(proc, required=False)
            if mod is not None:
                out.append(Candidate("module", mod))
        return out

    def target(self, location: str, processor: str) -> Candidate:
        """The candidate an install into ``location`` writes to (memoized)."""
        key = (location, canonical_processor(processor))
        if key not in self._targets:
            kind = location if location in ("cwd", "data", "system", "module") else "dir"
            self._targets[key] = Candidate(kind, self.directory(location, processor))
        return self._targets[key]
