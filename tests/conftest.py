"""Shared fixtures: a real HTTP server, an isolated machine (HOME, XDG, system dir), the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from httpserver import FileServer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
OCRD_TOOL_DIR = SHARED / "ocrd-tool"
FIXTURES = SHARED / "fixtures"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def make_tar(members: dict[str, bytes], compression: str = "gz") -> bytes:
    """A tar archive (compression: gz, xz, bz2 or '' for plain) of files; directories implied."""
    buf = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        # Implied parent directories, except for hostile names (they must stay as given).
        dirs = sorted({str(Path(n).parent) for n in members
                       if str(Path(n).parent) != "." and ".." not in n and not n.startswith("/")})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_traineddata(payload: bytes = b"lstm weights") -> bytes:
    """A Tesseract traineddata container (int32 entry count, int64 offsets, then the components) holding
    ``payload`` as its one component: enough to pass the header check an adopted model must pass."""
    import struct

    count = 24  # Tesseract 5's number of component types; all absent but one
    header = 4 + 8 * count
    offsets = [-1] * count
    offsets[17] = header  # TESSDATA_LSTM
    return struct.pack(f"<i{count}q", count, *offsets) + payload


def make_zip(members: dict[str, bytes]) -> bytes:
    """A zip archive of files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(members.items()):
            zf.writestr(name, data)
    return buf.getvalue()


def toml_value(value: Any) -> str:
    """A TOML value: strings as basic strings (JSON's escapes are TOML's; DEL, which JSON leaves as it is,
    TOML wants escaped), booleans, numbers, and arrays of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")


def toml_key(key: str) -> str:
    """A TOML key: bare where it may be, quoted otherwise."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


@dataclass(frozen=True)
class Model:
    """One model in models.toml, as its inline table; fields left None are not written."""

    name: str
    url: str | None = None
    type: str | None = None
    sha256: str | None = None
    path_in_archive: str | None = None
    location: str | None = None
    convert: bool | None = None
    description: str | None = None


ModelDecl = Model | Mapping[str, Any] | str  # a dict is written key by key, a str is the shorthand "name"


def model_toml(model: ModelDecl) -> str:
    """A model as models.toml writes it: ``{ name = "m", url = "..." }``, or ``"name"`` for a str."""
    if isinstance(model, str):
        return toml_value(model)
    fields = {k: v for k, v in asdict(model).items() if v is not None} if isinstance(model, Model) else model
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in fields.items()) + " }"


def manifest_toml(processors: Mapping[str, Sequence[ModelDecl]], settings: str = "", network: str = "") -> str:
    """models.toml text: ``[settings]`` with the raw TOML ``settings`` (which may go on with sub-tables,
    ``[settings.locations]`` ...), ``[settings.network]`` with the raw TOML ``network``, then
    ``[processors]``, one line per processor and one more per model when it has more than one."""
    text = ""
    if settings:
        text += "[settings]\n" + settings.rstrip("\n") + "\n"
    if network:
        text += "[settings.network]\n" + network.rstrip("\n") + "\n"
    text += "[processors]\n"
    for processor, models in processors.items():
        items = [model_toml(m) for m in models]
        if len(items) > 1:
            text += f"{toml_key(processor)} = [\n" + "".join(f"  {item},\n" for item in items) + "]\n"
        else:
            text += f"{toml_key(processor)} = [{''.join(items)}]\n"
    return text


@pytest.fixture
def raw():
    """Start RawServers (answers written byte by byte by the test) and stop them afterwards."""
    from httpserver import RawServer

    started = []

    def start(respond) -> RawServer:
        s = RawServer(respond).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server():
    """A started FileServer on 127.0.0.1."""
    s = FileServer().start()
    yield s
    s.stop()


@dataclass
class Result:
    """Exit code and captured output of one CLI run."""

    code: int
    out: str
    err: str


@dataclass
class Sandbox:
    """An isolated machine: every directory the tool may touch lives below ``root``."""

    root: Path
    home: Path
    data: Path  # $XDG_DATA_HOME
    config: Path  # $XDG_CONFIG_HOME
    cache: Path
    state: Path
    system: Path  # stands in for /usr/local/share/ocrd-resources
    tessdata: Path  # $TESSDATA_PREFIX
    project: Path  # holds models.toml, the cwd location
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch

    @property
    def manifest(self) -> Path:
        """The project's models.toml."""
        return self.project / "models.toml"

    @property
    def lock(self) -> Path:
        """The project's models.lock."""
        return self.project / "models.lock"

    def write_manifest(self, text: str) -> Path:
        """Write models.toml."""
        self.manifest.write_text(text)
        return self.manifest

    def declare(self, *models: ModelDecl, processor: str = "ocrd-x", settings: str = "", network: str = "",
                processors: Mapping[str, Sequence[ModelDecl]] | None = None) -> Path:
        """Declare a project: write models.toml with ``models`` for ``processor`` (and, after them,
        ``processors``: more models by processor), ``settings`` (raw TOML below ``[settings]``) and
        ``network`` (raw TOML below ``[settings.network]``). No models at all: an empty ``[processors]``."""
        declared: dict[str, Sequence[ModelDecl]] = {processor: models} if models else {}
        for name, more in (processors or {}).items():
            declared[name] = [*declared.get(name, ()), *more]
        return self.write_manifest(manifest_toml(declared, settings, network))

    def data_dir(self, processor: str) -> Path:
        """OCR-D's data location for a processor."""
        return self.data / "ocrd-resources" / processor

    def run(self, *args: str) -> Result:
        """Run the CLI in-process (as the console script would) and capture its output."""
        from ocrd_models.modelsync.cli import main

        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", ["modelsync", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        cap = self.capsys.readouterr()
        return Result(code, cap.out, cap.err)

    def env(self) -> dict[str, str]:
        """The environment for a subprocess run of the CLI."""
        return dict(os.environ)


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (relative POSIX path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sandbox(tmp_path, monkeypatch, capsys) -> Sandbox:
    """Isolate HOME, XDG dirs, OCR-D's system dir and TESSDATA_PREFIX below tmp_path; chdir to the project."""
    dirs = {n: tmp_path / n for n in ("home", "data", "config", "cache", "state", "system", "tessdata", "project")}
    for d in dirs.values():
        d.mkdir()
    env = {
        "HOME": dirs["home"], "XDG_DATA_HOME": dirs["data"], "XDG_CONFIG_HOME": dirs["config"],
        "XDG_CACHE_HOME": dirs["cache"], "XDG_STATE_HOME": dirs["state"], "MODELSYNC_SYSTEM_DIR": dirs["system"],
        "TESSDATA_PREFIX": dirs["tessdata"],
    }
    # Every setting of ours from the developer's shell (MODELSYNC_REGISTRY, MODELSYNC_OFFLINE, ...) and
    # every proxy or CA variable would change what a test sees: none reaches a test unless it sets it.
    # (MODELSYNC_OCRD_VENV is the test suite's own: where the interop tests keep OCR-D core.)
    for var in list(os.environ):
        if (var.startswith("MODELSYNC_") and var != "MODELSYNC_OCRD_VENV") \
                or var.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") \
                or var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "NETRC", "DOCKER_CONFIG",
                           "NO_COLOR", "FORCE_COLOR"):
            monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    # Only the interpreter's own bin dir (and system dirs) on PATH: no stray ocrd-* processors.
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]))
    monkeypatch.chdir(dirs["project"])
    return Sandbox(root=tmp_path, capsys=capsys, monkeypatch=monkeypatch, **dirs)


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str):
    """A tmpfs of ``size`` (mount's notation: "4m") mounted at ``mnt`` for the duration; skips the test
    where mounting is not possible (it needs root: CI runs the suite as root)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
