"""models.toml errors: precise, no traceback, and nothing changed on disk."""

from __future__ import annotations

import pytest
from conftest import tree_files

CASES = [
    # (manifest text, substrings the error must contain)
    ('[processors]\nocrd-x = ["a"\n', ["models.toml:3:1", "invalid TOML"]),
    ("[settings]\nparallel = = 2\n", ["models.toml:2:12", "invalid TOML"]),
    ('[processors]\nocrd-calamari-recognize = [{ name = "m", url = "https://x/y", type = "tarball" }]\n',
     ["line 2", "processors.ocrd-calamari-recognize[0].type", "'file', 'archive' or 'directory'"]),
    ('[settings]\nlocation = "dta"\n', ["line 2", "settings.location", "cwd, data, system, module"]),
    ('[settings.locations]\nocrd-x = "modul"\n', ["settings.locations", "cwd, data, system, module"]),
    ("[settings]\nparallel = 0\n", ["settings.parallel", "greater than or equal to 1"]),
    ('[processors]\nocrd-x = [{ name = "m", url = "https://x", colour = 1 }]\n',
     ["processors.ocrd-x[0].colour", "unknown field"]),
    ('[processors]\nocrd-x = [{ name = "../../etc/passwd", url = "https://x" }]\n', ["must not contain '/'"]),
    ('[processors]\nocrd-x = [{ name = "m", url = "ftp://x/m" }]\n', ["url scheme 'ftp'", "https, http, file"]),
    ('[processors]\nocrd-x = [{ name = "m", url = "https://x", sha256 = "abc" }]\n', ["64 hexadecimal"]),
    ('[processors]\nocrd-x = ["a", "a"]\n', ["declared twice"]),
    ('[processors]\nocrd-x = [{ name = "*", url = "https://x" }]\n', ["'*' stands for all"]),
    ('[processors]\n"ocrd x" = ["a"]\n', ["not a processor executable name"]),
    ('[procesors]\nocrd-x = ["a"]\n', ["procesors", "unknown field"]),
    ('[processors]\nocrd-tesserocr-recognize = ["deu.traineddat"]\n',
     ["unknown model 'deu.traineddat'", "Did you mean 'deu.traineddata'"]),
    ('[processors]\nocrd-calamari-recognise = ["*"]\n',
     ["unknown processor 'ocrd-calamari-recognise'", "Did you mean 'ocrd-calamari-recognize'"]),
    ('[processors]\nocrd-kraken-recognize = ["blla.mlmodel"]\n',
     ["unknown model 'blla.mlmodel'", "available ocrd-kraken-recognize"]),
]


@pytest.mark.parametrize("text,needles", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("command", ["sync", "plan", "lock"])
def test_bad_manifest_is_a_precise_error_and_changes_nothing(sandbox, text, needles, command):
    sandbox.write_manifest(text)
    before = tree_files(sandbox.root)
    r = sandbox.run(command)
    assert r.code == 2, r.err
    for needle in needles:
        assert needle in r.err, (needle, r.err)
    assert "Traceback" not in r.err
    assert tree_files(sandbox.root) == before


def test_missing_manifest_says_how_to_create_one(sandbox):
    r = sandbox.run("sync")
    assert r.code == 2 and "modelsync init" in r.err


def test_manifest_hash_ignores_formatting_order_and_mirrors(sandbox):
    from pathlib import Path

    from ocrd_models.modelsync.spec.manifest import parse_manifest

    a = parse_manifest('[processors]\nocrd-x = ["a", "b"]\n', Path("m"))
    b = parse_manifest('# comment\n[settings]\nparallel = 8\nmirrors = { "https://a/" = "http://b/" }\n'
                       '[processors]\nocrd-x = [ "b",\n "a" ]\n', Path("m"))
    c = parse_manifest('[processors]\nocrd-x = ["a", { name = "b", location = "cwd" }]\n', Path("m"))
    assert a.normalized_hash() == b.normalized_hash()
    assert a.normalized_hash() != c.normalized_hash()


def test_a_manifest_validated_before_is_rebuilt_equal_without_validators(tmp_path, monkeypatch):
    from ocrd_models.modelsync.spec import manifest, parsecache

    monkeypatch.setattr(parsecache, "PARSE_CACHE_DIR", tmp_path / "cache")
    text = ('[settings]\nparallel = 3\nlocation = "module"\nconvert_pyrnn = true\nallow_http = ["a.example"]\n'
            '[settings.network]\nretries = 7\n[settings.locations]\nocrd-x = "cwd"\n'
            '[processors]\nocrd-x = ["a", { name = "b.tar.gz", url = "https://x/b.tar.gz", type = "archive", '
            'path_in_archive = "m", sha256 = "' + "ab" * 32 + '", convert = false }]\n'
            'ocrd-y = [{ name = "c", url = "file:///tmp/c", description = "see" }]\n')
    first = manifest.parse_manifest(text, tmp_path / "models.toml")
    parsecache.flush()

    def no_validation(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(manifest.Manifest, "model_validate", no_validation)
    again = manifest.parse_manifest(text, tmp_path / "models.toml")
    assert again == first and again.model_dump() == first.model_dump()
    assert again.normalized_hash() == first.normalized_hash()
    spec = again.processors["ocrd-x"][1]
    assert (spec.name, spec.type, spec.path_in_archive, spec.convert) == ("b.tar.gz", "archive", "m", False)
    assert again.settings.network.retries == 7 and again.settings.locations == {"ocrd-x": "cwd"}
    with pytest.raises(Exception):
        spec.name = "other"  # still frozen
