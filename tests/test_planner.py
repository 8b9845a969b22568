"""The planner's rules, table by table: a pure function of (wanted, lock entry, what was observed).

No server, no files: each row builds the three inputs and names the action and the words of the
reason the user reads. The end-to-end tests (test_sync, test_installed, test_locations) show the
same rules through the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ocrd_models.modelsync.plan.locations import Candidate
from ocrd_models.modelsync.spec.lockfile import LockEntry
from ocrd_models.modelsync.plan.planner import (INSTALL, KEEP, SHADOWED, UPDATE, expectation, make_plan,
                                           plan_resource)
from ocrd_models.modelsync.resources.resolve import Wanted
from ocrd_models.modelsync.plan.observe import Hit, Observation

A, B, PIN = "a" * 64, "b" * 64, "c" * 64
DATA = Candidate("data", Path("/d/ocrd-x"))
CWD = Candidate("cwd", Path("/project"))
TARGET = DATA.directory / "m.bin"


def wanted(**kw) -> Wanted:
    base = dict(processor="ocrd-x", name="m.bin", url="https://example.org/m.bin", type="file",
                path_in_archive=".", location="data", sha256=None, source="manifest")
    return Wanted(**{**base, **kw})


def locked(w: Wanted, installed: str = A, **kw) -> LockEntry:
    return LockEntry(processor=w.processor, name=w.name, url=w.url, type=w.type, path_in_archive=w.path_in_archive,
                     location=w.location, sha256=installed, size=1, **kw)


def at_target(digest: str | None, trusted: bool = False, implausible: str | None = None) -> Hit:
    return Hit(DATA, TARGET, False, digest, trusted, implausible)


def in_cwd(digest: str | None) -> Hit:
    return Hit(CWD, CWD.directory / "m.bin", False, digest, False)


def observed(*hits: Hit, on_path: bool = True) -> Observation:
    return Observation(DATA, TARGET, hits, on_path)


# (id, wanted, lock entry, hits, upgrade, expected kind, words of the reason)
W, W_PIN, W_ARCHIVE_PIN = wanted(), wanted(sha256=PIN), wanted(type="archive", sha256=PIN, path_in_archive="m")
RULES = [
    ("nothing there", W, None, (), False, INSTALL, "not installed"),
    ("locked, matching, record vouches", W, locked(W), (at_target(A, trusted=True),), False, KEEP, "(verified)"),
    ("locked, matching, hashed", W, locked(W), (at_target(A),), False, KEEP, "(hashed)"),
    ("locked, target modified", W, locked(W), (at_target(B),), False, UPDATE, "differs from the lock"),
    ("locked, differing copy only elsewhere", W, locked(W), (in_cwd(B),), False, INSTALL, "only a differing copy"),
    ("locked, ours right but shadowed", W, locked(W), (in_cwd(B), at_target(A)), False, SHADOWED, "finds"),
    ("unlocked, plausible copy: adopted", W, None, (at_target(None),), False, KEEP, "adopted as is"),
    ("unlocked, implausible copy: fetched", W, None, (at_target(None, implausible="an empty file (0 bytes)"),),
     False, UPDATE, "cannot be the model (an empty file"),
    ("pinned file, matching", W_PIN, None, (at_target(PIN),), False, KEEP, "installed at data"),
    ("pinned file, differing", W_PIN, None, (at_target(B),), False, UPDATE, "differs"),
    ("pinned archive, unverified tree", W_ARCHIVE_PIN, None, (at_target(None),), False, UPDATE, "pinned"),
    ("upgrade of an installed model", W, locked(W), (at_target(A, trusted=True),), True, UPDATE, "--upgrade"),
    ("declaration changed", wanted(url="https://example.org/v2.bin"), locked(W), (at_target(A),), False, UPDATE,
     "declaration changed since the lock (url)"),
]


@pytest.mark.parametrize("w,entry,hits,upgrade,kind,words", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(w, entry, hits, upgrade, kind, words):
    action = plan_resource(w, expectation(w, entry), observed(*hits), upgrade)
    assert action.kind == kind, action
    assert words in action.reason, action.reason


def test_a_refetch_is_marked_so_an_unchanged_origin_replaces_nothing():
    action = plan_resource(W, expectation(W, None), observed(at_target(None)), upgrade=True)
    assert action.refetch and action.kind == UPDATE
    assert not plan_resource(W, expectation(W, locked(W)), observed(at_target(A))).refetch


def test_a_target_off_the_lookup_path_is_warned_about():
    action = plan_resource(W, expectation(W, None), observed(on_path=False))
    assert action.kind == INSTALL and any("OCRD_X_PATH" in w for w in action.warnings)


def test_an_undeclared_locked_resource_is_kept_or_pruned():
    w2 = wanted(name="old.bin")
    lock_entry = locked(w2)
    from ocrd_models.modelsync.spec.lockfile import Lockfile

    lock = Lockfile("0" * 64, (lock_entry,))
    path = DATA.directory / "old.bin"
    kept = make_plan([], lock, {}, {w2.key: path})
    (action,) = kept.actions
    assert action.kind == KEEP and action.undeclared and "--prune" in action.reason
    (removal,) = make_plan([], lock, {}, {w2.key: path}, prune=True).actions
    assert removal.kind == "remove" and removal.target == path


def test_an_entry_declared_again_is_no_longer_undeclared():
    exp = expectation(W, locked(W, undeclared=True))
    assert exp.locked is not None and exp.locked.undeclared is None
