"""The wheel: our code only below ocrd_models/modelsync/, coexisting with OCR-D's ocrd_models package."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

# OCR-D core 3.x's regular package ocrd_models/ (DESIGN.md 2.1).
OCRD_FILES = {
    "__init__.py", "constants.py", "mets-empty.xml", "ocrd_agent.py", "ocrd_exif.py", "ocrd_file.py",
    "ocrd_mets.py", "ocrd_page.py", "ocrd_page_generateds.py", "ocrd_xml_base.py", "report.py", "utils.py",
    "xpath_functions.py",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True)
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_has_nothing_directly_under_ocrd_models(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if n.startswith("ocrd_models/")]
    assert code, "the wheel holds no code"
    assert all(n.startswith("ocrd_models/modelsync/") for n in code), code
    top_level = {n.split("/", 2)[1] for n in code}
    assert top_level == {"modelsync"} and "modelsync" not in {f.removesuffix(".py") for f in OCRD_FILES}
    assert not [n for n in names if n.startswith("ocrd_models/") and n.count("/") == 1]
    assert "ocrd_models/modelsync/data/registry.json" in names
    others = {n.split("/")[0] for n in names} - {"ocrd_models"}
    assert all(o.endswith(".dist-info") for o in others), others


def test_wheel_metadata_names_a_free_distribution_and_a_console_script(wheel):
    zf = zipfile.ZipFile(wheel)
    meta = next(n for n in zf.namelist() if n.endswith("METADATA"))
    text = zf.read(meta).decode()
    assert "Name: ocrd-modelsync" in text
    entry_points = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "modelsync = ocrd_models.modelsync.cli:main" in entry_points
    # Not named ocrd-*: `ocrd resmgr` would run it with --dump-json.
    assert "ocrd-" not in entry_points.split("[console_scripts]")[1]


def test_coexists_with_ocrd_core_regular_package(wheel, tmp_path):
    site = tmp_path / "site-packages"
    fake_ocrd = site / "ocrd_models"
    fake_ocrd.mkdir(parents=True)
    (fake_ocrd / "__init__.py").write_text("from .ocrd_mets import OcrdMets\n")
    (fake_ocrd / "ocrd_mets.py").write_text("class OcrdMets: pass\n")
    zipfile.ZipFile(wheel).extractall(site)
    check = ("import ocrd_models.modelsync.cli as c; from ocrd_models import OcrdMets; "
             "import ocrd_models; print(c.__file__)")
    proc = subprocess.run([sys.executable, "-c", check], env={"PYTHONPATH": str(site), "PATH": "/usr/bin"},
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(site))
    # Uninstalling OCR-D (its files only) leaves ours working, as a namespace package.
    (fake_ocrd / "__init__.py").unlink()
    (fake_ocrd / "ocrd_mets.py").unlink()
    proc = subprocess.run([sys.executable, "-c", "import ocrd_models.modelsync.cli"],
                          env={"PYTHONPATH": str(site)}, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
