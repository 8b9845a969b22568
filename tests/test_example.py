"""examples/models.toml, synced for real with its origins mapped to the local server by mirrors."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from conftest import FIXTURES, REPO, make_tar, make_zip, sha256, tree_files

from ocrd_models.modelsync.project import open_project


def _serve_example(sandbox, server) -> tuple[list[str], dict]:
    """Serve plausible bytes at every URL the example resolves to; return --mirror args and contents."""
    wanted = open_project(sandbox.manifest).wanted()
    mirrors, contents = set(), {}
    for w in wanted:
        parts = urlsplit(w.url)
        mirrors.add((f"{parts.scheme}://{parts.netloc}/", server.url(f"/{parts.netloc}/")))
        if w.name == "fraktur-jze.pyrnn.gz":
            data = (FIXTURES / "pyrnn" / "fraktur-jze.pyrnn.gz").read_bytes()  # the real pinned model
        elif w.type == "archive":
            prefix = "" if w.path_in_archive == "." else w.path_in_archive.rstrip("/") + "/"
            members = {f"{prefix}checkpoint.json": b'{"v": 1}', f"{prefix}weights/w.bin": os.urandom(3000)}
            data = make_zip(members) if ".zip" in parts.path else make_tar(members, "xz")
        else:
            data = os.urandom(5000)
        server.add(f"/{parts.netloc}{parts.path}", data)
        contents[w.key] = data
    return [f"--mirror={a}={b}" for a, b in sorted(mirrors)], contents


def test_example_manifest_syncs_through_mirrors(sandbox, server):
    shutil.copy(REPO / "examples" / "models.toml", sandbox.manifest)
    mirror_args, contents = _serve_example(sandbox, server)
    assert len(contents) == 8
    r = sandbox.run("sync", *mirror_args)
    assert r.code == 0, r.err
    tess = {n: (sandbox.tessdata / n).read_bytes() for n in
            ("deu.traineddata", "frk.traineddata", "Fraktur_GT4HistOCR.traineddata")}
    assert tess == {n: contents[("ocrd-tesserocr-recognize", n)] for n in tess}
    ocropy = sandbox.data_dir("ocrd-cis-ocropy-recognize") / "fraktur-jze.pyrnn.gz"
    assert sha256(ocropy.read_bytes()) == "7d27346bfff8e8f35ed38afd4c15439aac483e2211aa43a092102b1c7c1ddd61"
    calamari = sandbox.project / "qurator-gt4histocr-1.0"  # the cwd location, per [settings.locations]
    assert set(tree_files(calamari)) == {"checkpoint.json", "weights/w.bin"}
    assert (sandbox.data_dir("ocrd-sbb-binarize") / "default-2021-03-09" / "checkpoint.json").exists()
    assert (sandbox.data_dir("ocrd-kraken-segment") / "blla.mlmodel").exists()

    lock_text = sandbox.lock.read_text()
    lock = tomllib.loads(lock_text)
    assert len(lock["resource"]) == 8
    assert "127.0.0.1" not in lock_text and str(sandbox.root) not in lock_text
    for e in lock["resource"]:
        assert e["sha256"] == sha256(contents[(e["processor"], e["name"])])
        assert PurePosixPath(urlsplit(e["url"]).path).name  # origin URLs, as declared

    # Nothing is fetched twice; everything verifies.
    requests_before = len(server.requests)
    assert sandbox.run("sync", *mirror_args).code == 0
    assert len(server.requests) == requests_before
    assert sandbox.lock.read_text() == lock_text
    assert sandbox.run("verify").code == 0
