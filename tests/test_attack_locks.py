"""Issue 13, parts 2 and 5: models.lock is input, and TOML that would hang or crash the parser.

A lock is checked like models.toml (processor names, names, urls, path_in_archive, locations) and a
lock that fails is refused (exit 2) before anything is fetched or written. A lock may hold a machine
path (absolute, ``~/``, or a relative one leaving the project) only where models.toml declares exactly
that location. models.toml and models.lock over the size, nesting or dotted-key limits are refused
before the TOML parser sees them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Model, make_tar, sha256

BLOB = b"model bytes of issue 13\n" * 100
ARCHIVE = make_tar({"ckpt/w.bin": b"weights"})
COMMANDS = [("sync", "--frozen"), ("sync", "--locked"), ("sync",), ("status",), ("verify",), ("plan",)]
MODELSYNC = str(Path(sys.executable).parent / "modelsync")


def _value(v: str | int) -> str:
    # JSON's escapes (\", \\, \uXXXX below the astral planes) are TOML basic-string escapes too.
    return str(v) if isinstance(v, int) else json.dumps(v)


def _lock_text(**fields: str | int) -> str:
    """A one-entry models.lock, written as text; ``fields`` override the benign entry's."""
    entry: dict[str, str | int] = {"processor": "ocrd-x", "name": "m.bin", "url": "", "type": "file",
                                   "path_in_archive": ".", "location": "data",
                                   "sha256": sha256(BLOB), "size": len(BLOB)}
    entry.update(fields)
    lines = ["# models.lock", "version = 1", f'manifest_hash = "{"0" * 64}"', "", "[[resource]]"]
    lines += [f"{k} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root``: a file's bytes, None for a directory or anything else."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def outside(sandbox) -> Path:
    """A directory no install may touch, with a canary file in it."""
    d = sandbox.root / "outside"
    d.mkdir()
    (d / "canary").write_bytes(b"canary")
    return d


# (id, lock fields, the field the message must name). Each path-like value aims at sandbox/outside.
HOSTILE = [
    ("processor-dotdot", {"processor": "../../outside/x"}, "processor"),
    ("processor-dotdot-system", {"processor": "../outside/y", "location": "system"}, "processor"),
    ("processor-absolute", {"processor": "{outside}/abs"}, "processor"),
    ("processor-nul", {"processor": "ocrd-x\u0000y"}, "processor"),
    ("processor-newline", {"processor": "ocrd-x\n"}, "processor"),
    ("location-absolute", {"location": "{outside}/loc"}, "location"),
    ("location-home", {"location": "~/stolen"}, "location"),
    ("location-relative-escape", {"location": "models/../../outside"}, "location"),
    ("name-slash", {"name": "../outside/n", "location": "cwd"}, "name"),
    ("url-scheme", {"url": "ftp://127.0.0.1:1/m.bin"}, "url"),
    ("sha256-newline", {"sha256": sha256(BLOB) + "\n"}, "sha256"),
    ("path_in_archive-dotdot", {"type": "archive", "path_in_archive": "../../outside", "url": "{archive}",
                                "sha256": sha256(ARCHIVE), "size": len(ARCHIVE)}, "path_in_archive"),
]


def _fill(fields: dict, outside: Path, url: str, archive: str) -> dict:
    return {k: v.format(outside=outside, archive=archive) if isinstance(v, str) else v
            for k, v in fields.items()} | ({} if "url" in fields else {"url": url})


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("fields,field_name", [(f, n) for _, f, n in HOSTILE], ids=[i for i, _, _ in HOSTILE])
def test_a_hostile_lock_is_refused_before_anything_is_fetched_or_written(sandbox, server, outside, command,
                                                                          fields, field_name):
    url = server.add("/m.bin", BLOB)
    sandbox.declare(Model("m.bin", url))
    archive = server.add("/m.tar.gz", ARCHIVE)
    sandbox.lock.write_text(_lock_text(**_fill(fields, outside, url, archive)))
    if field_name == "location" and command != ("sync", "--frozen"):
        # models.toml decides what is installed: an entry at a location it does not declare is stale,
        # left out (never a target), whatever the command.
        before_outside = _snapshot(outside)
        r = sandbox.run(*command)
        assert r.code in (0, 5), (r.code, r.err)  # 5: --locked, the lock lacks the declared model
        assert _snapshot(outside) == before_outside and not list(Path(sandbox.home).glob("stolen*"))
        assert "Traceback" not in r.err
        return
    before = _snapshot(sandbox.root)
    r = sandbox.run(*command)
    assert r.code == 2, (r.code, r.err)
    assert "models.lock" in r.err and "resource[0]" in r.err and f"field {field_name!r}" in r.err, r.err
    assert "Traceback" not in r.err and "\x00" not in r.err
    assert _snapshot(sandbox.root) == before
    assert server.requests == []


@pytest.mark.parametrize("location", ["{outside}/loc", "~/stolen", "models/../../outside"])
def test_a_lock_with_a_machine_path_and_no_models_toml_is_refused_by_frozen(sandbox, server, outside, location):
    url = server.add("/m.bin", BLOB)
    sandbox.lock.write_text(_lock_text(url=url, location=location.format(outside=outside)))
    before = _snapshot(sandbox.root)
    r = sandbox.run("sync", "--frozen")
    assert r.code == 2, (r.code, r.err)
    assert "field 'location'" in r.err and "no models.toml" in r.err, r.err
    assert _snapshot(sandbox.root) == before
    assert server.requests == []


def test_a_lock_location_other_than_the_declared_one_is_refused(sandbox, server, outside):
    url = server.add("/m.bin", BLOB)
    sandbox.declare(Model("m.bin", url, location=f"{outside}/declared"))
    sandbox.lock.write_text(_lock_text(url=url, location=f"{outside}/elsewhere"))
    before = _snapshot(sandbox.root)
    r = sandbox.run("sync", "--frozen")
    assert r.code == 2 and "field 'location'" in r.err and "does not declare" in r.err, r.err
    assert _snapshot(sandbox.root) == before
    assert server.requests == []


# (id, a models.toml declaring the model at ``url`` and the location ``loc`` the lock holds)
DECLARED = [
    ("model-location", lambda sandbox, url, loc: sandbox.declare(Model("m.bin", url, location=loc))),
    ("settings-location", lambda sandbox, url, loc: sandbox.declare(Model("m.bin", url),
                                                                    settings=f'location = "{loc}"')),
    ("settings-locations", lambda sandbox, url, loc: sandbox.declare(Model("m.bin", url),
                                                                     settings=f'[settings.locations]\nocrd-x = "{loc}"')),
]


@pytest.mark.parametrize("declare", [d for _, d in DECLARED], ids=[i for i, _ in DECLARED])
@pytest.mark.parametrize("where", ["absolute", "home", "relative-outside"])
def test_a_lock_location_declared_in_models_toml_installs_there(sandbox, server, outside, declare, where):
    url = server.add("/m.bin", BLOB)
    loc, target = {"absolute": (f"{outside}/models", outside / "models"),
                   "home": ("~/models", sandbox.home / "models"),
                   "relative-outside": ("../outside/rel", outside / "rel")}[where]
    declare(sandbox, url, loc)
    sandbox.lock.write_text(_lock_text(url=url, location=loc))
    lock_before = sandbox.lock.read_bytes()
    r = sandbox.run("sync", "--frozen")
    assert r.code == 0, r.err
    assert (target / "m.bin").read_bytes() == BLOB
    assert sandbox.lock.read_bytes() == lock_before
    assert server.count("/m.bin") == 1


def test_a_relative_location_inside_the_project_needs_no_declaration(sandbox, server):
    url = server.add("/m.bin", BLOB)
    sandbox.lock.write_text(_lock_text(url=url, location="./models/sub/../sub"))
    r = sandbox.run("sync", "--frozen")
    assert r.code == 0, r.err
    assert (sandbox.project / "models" / "sub" / "m.bin").read_bytes() == BLOB


def test_our_own_lock_with_a_declared_absolute_location_keeps_working(sandbox, server, outside):
    # The lock `sync` writes for an absolute location is accepted by every command that reads it.
    url = server.add("/m.bin", BLOB)
    sandbox.declare(Model("m.bin", url), settings=f'location = "{outside}/models"')
    assert sandbox.run("sync").code == 0
    assert f'location = "{outside}/models"' in sandbox.lock.read_text()
    for command in COMMANDS:
        r = sandbox.run(*command)
        assert r.code == 0, (command, r.err)
    assert (outside / "models" / "m.bin").read_bytes() == BLOB
    assert server.count("/m.bin") == 1


# -- TOML that would make the parser hang or crash ------------------------------------------------

LIMIT_BYTES = 16 * 1024 * 1024

TRICKY_PREFIX = (
    "# a comment with a quote \" and ''' that open nothing\n"
    's1 = "a # not a comment, \\" and \'\'\' inside"\n'
    "s2 = 'literal with \" and #'\n"
    's3 = """multi\nline with \' and " and \'\'\' and # and \\""" still inside"""\n'
    "s4 = '''multi literal with \"\"\" and \" and # inside'''\n"
)

BOMBS = {
    # What the reports sent: tomllib is quadratic in a dotted key's parts (21 GB, 83 s for 60 000).
    "dotted-key": ("a" + ".a" * 59_999 + " = 1\n", "dotted key"),
    "nested-arrays": ("x = " + "[" * 500 + "]" * 500 + "\n", "nest"),
    "nested-inline-tables": ("x = " + "{ a = " * 500 + "1" + " }" * 500 + "\n", "nest"),
    # The same behind strings and comments a naive scan would misread.
    "disguised": (TRICKY_PREFIX + "x = " + "[" * 500 + "]" * 500 + "\n", "nest"),
    "over-size": ("# " + "x" * LIMIT_BYTES + "\n", "bytes"),
}


def _run_limited(sandbox, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with 2 GiB of address space, failing instead of hanging after 60 s."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([MODELSYNC, *args], cwd=sandbox.project, env=sandbox.env(), capture_output=True,
                          text=True, timeout=60, preexec_fn=limit)


@pytest.mark.parametrize("bomb", BOMBS, ids=list(BOMBS))
def test_a_models_toml_bomb_is_refused_quickly_and_in_bounded_memory(sandbox, bomb):
    text, needle = BOMBS[bomb]
    sandbox.write_manifest('[processors]\nocrd-x = []\n[settings.mirrors]\n' + text)
    before = _snapshot(sandbox.root)
    r = _run_limited(sandbox, "plan")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "models.toml" in r.stderr and needle in r.stderr and "limit" in r.stderr, r.stderr[-2000:]
    if bomb != "over-size":
        line = 4 + TRICKY_PREFIX.count("\n") if bomb == "disguised" else 4
        assert f"models.toml:{line}:" in r.stderr, r.stderr[-2000:]
    assert _snapshot(sandbox.root) == before


@pytest.mark.parametrize("with_manifest", [False, True], ids=["frozen-no-manifest", "status"])
@pytest.mark.parametrize("bomb", BOMBS, ids=list(BOMBS))
def test_a_models_lock_bomb_is_refused_quickly_and_in_bounded_memory(sandbox, server, bomb, with_manifest):
    text, needle = BOMBS[bomb]
    if with_manifest:
        sandbox.declare(Model("m.bin", server.add("/m.bin", BLOB)))
    sandbox.lock.write_text('version = 1\n' + text)
    before = _snapshot(sandbox.root)
    r = _run_limited(sandbox, *(("status",) if with_manifest else ("sync", "--frozen")))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "models.lock" in r.stderr and needle in r.stderr and "limit" in r.stderr, r.stderr[-2000:]
    assert _snapshot(sandbox.root) == before
    assert server.requests == []


def test_brackets_dots_and_quotes_inside_strings_and_comments_are_not_limits(sandbox, server):
    # Far beyond every limit, but only inside strings and comments: an ordinary manifest.
    url = server.add("/m.bin", BLOB)
    deep = "[" * 200 + "{" * 200
    dots = "." * 100
    sandbox.write_manifest(
        f"# {deep} {dots} \"\n"
        "[processors] # ' \"\n"
        f'ocrd-x = [{{ name = "m.bin", url = "{url}", description = "{deep}{dots}#" }}, # {deep}\n'
        f"  {{ name = 'n{dots}bin', url = '{url}', description = '''\n{deep}\n{dots}\n\"\"\"''' }},\n"
        f'  {{ name = "o.bin", url = "{url}", description = """{deep}\n\\"""{dots}""" }},\n'
        "]\n"
        "[settings]\n"
        'network.retries = 1 # a dotted key of two parts, and a float:\n'
        'network.backoff = 0.25\n'
    )
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert (sandbox.data_dir("ocrd-x") / f"n{dots}bin").read_bytes() == BLOB
    assert sandbox.run("sync", "--frozen").code == 0


def test_a_ten_thousand_model_manifest_and_its_lock_load(sandbox):
    # As large as benchmarks/perf.py makes them, with every lock field filled and a long location.
    loc = "/srv/ocr/" + "models-of-a-large-project/" * 3
    n = 10_000
    sandbox.declare(*(Model(f"r{i:05}.bin", f"https://models.example.org/some/long/path/r{i:05}.bin",
                            sha256=sha256(b"%d" % i), location=loc) for i in range(n)),
                    processor="ocrd-bench-recognize", settings="parallel = 4")
    entries = "".join(
        f'\n[[resource]]\nprocessor = "ocrd-bench-recognize"\nname = "r{i:05}.bin"\n'
        f'url = "https://models.example.org/some/long/path/r{i:05}.bin"\ntype = "file"\npath_in_archive = "."\n'
        f'location = "{loc}"\nsha256 = "{sha256(b"%d" % i)}"\nsize = {1000 + i}\n'
        f'installed_sha256 = "{sha256(b"x%d" % i)}"\nfetched_url = "https://mirror.example.org/a/long/path/r{i:05}.bin"\n'
        f'converted_sha256 = "{sha256(b"c%d" % i)}"\n' for i in range(n))
    sandbox.lock.write_text(f'version = 1\nmanifest_hash = "{"0" * 64}"\n{entries}')
    assert sandbox.lock.stat().st_size > 4_000_000
    r = sandbox.run("plan", "--json")
    assert r.code == 0, r.err[-2000:]
    assert len(json.loads(r.out)["actions"]) == n


def test_the_parser_running_out_of_stack_is_a_user_error_not_a_bug(sandbox, monkeypatch):
    # The safety net behind the limits: with the pre-scan switched off, tomllib's RecursionError on
    # arrays nested 500 deep is still reported as a bad file (exit 2), never as a bug (exit 1).
    from ocrd_models.modelsync.spec import toml

    monkeypatch.setattr(toml, "check_toml_limits", lambda *args: None)
    sandbox.write_manifest("x = " + "[" * 500 + "]" * 500 + "\n")
    before = _snapshot(sandbox.root)
    r = sandbox.run("plan")
    assert r.code == 2, (r.code, r.err)
    assert "models.toml" in r.err and "ran out of stack" in r.err
    assert _snapshot(sandbox.root) == before


def test_a_schema_error_in_a_long_file_is_reported_without_hanging(sandbox):
    # Naming the line of a schema error searched the text with patterns that spanned lines: 40 000
    # blank lines took 44 s, quadratic. Now each search stays on one line, and at most 20 are made.
    bad = '{ name = "m", url = "https://example.org/m", type = "tarball" }'
    sandbox.write_manifest("[processors]\nocrd-x = [\n" + f"{bad},\n" * 5000 + "]\n" + "\n" * 2_000_000)
    before = _snapshot(sandbox.root)
    r = _run_limited(sandbox, "plan")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "line 2: processors.ocrd-x[0].type" in r.stderr and "and 4980 more problem(s)" in r.stderr, r.stderr[:2000]
    assert _snapshot(sandbox.root) == before


def test_a_lock_checked_before_is_checked_again_against_todays_models_toml(sandbox, server, outside):
    # A large lock that passed once is not re-checked field by field (its validated marker), but
    # whether models.toml declares its machine paths is asked on every load.
    url = server.add("/m.bin", BLOB)
    sandbox.declare(Model("m.bin", url), settings=f'location = "{outside}/models"')
    entries = "".join(f'\n[[resource]]\nprocessor = "ocrd-x"\nname = "m{i:04}.bin"\nurl = "{url}"\n'
                      f'location = "{outside}/models"\nsha256 = "{sha256(BLOB)}"\nsize = {len(BLOB)}\n'
                      for i in range(500))
    sandbox.lock.write_text(f'version = 1\nmanifest_hash = "{"0" * 64}"\n{entries}')
    assert sandbox.lock.stat().st_size > 64 * 1024
    assert sandbox.run("status").code == 0
    assert list(sandbox.cache.rglob("validated/*.json")), "the marker this test is about was not written"
    sandbox.declare(Model("m.bin", url))
    before = _snapshot(sandbox.root)
    r = sandbox.run("sync", "--frozen")
    assert r.code == 2 and "field 'location'" in r.err and "does not declare" in r.err, r.err
    assert _snapshot(sandbox.root) == before
    assert server.requests == []
    # Without --frozen the entries are stale instead: models.toml decides, nothing lands outside.
    outside_before = _snapshot(outside)
    r = sandbox.run("status")
    assert r.code == 0 and str(outside) not in r.out, r.out
    assert _snapshot(outside) == outside_before


def test_moving_a_declared_location_never_locks_the_project_out(sandbox, server, outside):
    url = server.add("/m.bin", BLOB)
    sandbox.declare(Model("m.bin", url, location=f"{outside}/a"))
    assert sandbox.run("sync").code == 0
    sandbox.declare(Model("m.bin", url, location=f"{outside}/b"))
    for command in (("status",), ("plan",), ("lock",), ("sync",)):
        r = sandbox.run(*command)
        assert r.code == 0, (command, r.err)
    assert (outside / "b" / "m.bin").read_bytes() == BLOB
    assert f"{outside}/b" in sandbox.lock.read_text() and f"{outside}/a" not in sandbox.lock.read_text()


def test_cache_prune_keeps_the_blobs_of_a_lock_with_a_declared_machine_path(sandbox, server, outside):
    url = server.add("/m.bin", BLOB)
    sandbox.declare(Model("m.bin", url), settings=f'location = "{outside}/models"')
    assert sandbox.run("sync").code == 0
    r = sandbox.run("cache", "prune", "--json")
    assert r.code == 0 and json.loads(r.out)["removed"] == [], r.out


@pytest.mark.parametrize("command", [("sync", "--frozen"), ("sync",)])
def test_a_relative_lock_location_through_a_symlink_in_the_checkout_never_leaves_the_project(
        sandbox, server, outside, command):
    """A committed ``vendor -> <outside>`` symlink and a lock entry at ``./vendor``: textually inside the
    project, really outside. It counts as a machine path (refused with --frozen, stale otherwise)."""
    key = b"ssh-ed25519 AAAA attacker\n"
    url = server.add("/k", key)
    (sandbox.project / "vendor").symlink_to(outside)
    sandbox.lock.write_text(_lock_text(url=url, name="authorized_keys", location="./vendor",
                                       sha256=sha256(key), size=len(key)))
    if command == ("sync",):
        sandbox.declare(Model("m.bin", server.add("/m.bin", BLOB)))
    before = _snapshot(outside)
    r = sandbox.run(*command)
    if command == ("sync", "--frozen"):
        assert r.code == 2 and "through a symbolic link" in r.err, r.err
    else:
        assert r.code == 0, r.err
    assert _snapshot(outside) == before and not (outside / "authorized_keys").exists()
    assert server.count("/k") == 0
