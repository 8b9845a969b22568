"""Legacy pyrnn models: the restricted unpickler, inspect, convert, and conversion during sync.

The fixtures are real Python 2 pickles (../shared/fixtures/pyrnn); they are only ever opened by
our restricted unpickler. Malicious pickles are hand-assembled opcode streams whose payload
would create a marker file; the marker must never appear.
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import shutil
import struct
import sys

import pytest

from conftest import FIXTURES, Model, sha256

from ocrd_models.modelsync.legacy import pyrnn, safepickle
from ocrd_models.modelsync.errors import UnsafeModel

h5py = pytest.importorskip("h5py", reason="the legacy extra (numpy, h5py) is part of the test install")
np = pytest.importorskip("numpy")

PYRNN = FIXTURES / "pyrnn"
FRAKTUR = PYRNN / "fraktur-jze.pyrnn.gz"
TOY_GZ = PYRNN / "kraken-toy.pyrnn.gz"
TOY_BZ2 = PYRNN / "kraken-toy.pyrnn.bz2"
TOY_HDF5 = PYRNN / "kraken-toy.hdf5"
PROC = "ocrd-cis-ocropy-recognize"

# Documented shapes of fraktur-jze (LEGACY-MODELS.md §3): Ni 48, ns 100, na 149, No 107.
FRAKTUR_SHAPES = {"WGI": (100, 149), "WGF": (100, 149), "WGO": (100, 149), "WCI": (100, 149),
                  "WIP": (100, 1), "WFP": (100, 1), "WOP": (100, 1)}


def _as_f32(arr: safepickle.RawArray) -> list[float]:
    """The pickle's float64 values cast to float32 by struct (independent of numpy)."""
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in arr.values()]


def _h5(path):
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f[k][()]) for k in f.keys()}, dict(f.attrs), {k: f[k].dtype.str for k in f.keys()}


# -- conversion of the real models ------------------------------------------------------------------

def test_fraktur_conversion_keeps_every_weight(sandbox, tmp_path):
    out = tmp_path / "fraktur.hdf5"
    r = sandbox.run("convert", str(FRAKTUR), "-o", str(out))
    assert r.code == 0, r.err
    data, attrs, dtypes = _h5(out)
    assert attrs == {"kind": "pyrnn-bidi"}
    assert len(data) == 17 and set(dtypes.values()) == {"<f4"}
    model = pyrnn.from_object(safepickle.load(FRAKTUR))
    for prefix in (pyrnn.FORWARD, pyrnn.REVERSED):
        for short, shape in FRAKTUR_SHAPES.items():
            got = data[prefix + short]
            assert got.shape == shape, (prefix, short)
            assert got.ravel().tolist() == _as_f32(model.lstm[prefix + short]), (prefix, short)
    w2 = _as_f32(model.softmax)  # (107, 201) row-major: column 0 is the bias
    rows = [w2[i * 201:(i + 1) * 201] for i in range(107)]
    assert data[pyrnn.SOFTMAX_BIAS].shape == (107, 1)
    assert data[pyrnn.SOFTMAX_BIAS].ravel().tolist() == [r[0] for r in rows]
    assert data[pyrnn.SOFTMAX_WEIGHTS].shape == (107, 200)
    assert data[pyrnn.SOFTMAX_WEIGHTS].tolist() == [r[1:] for r in rows]
    codec = data["codec"].ravel().tolist()
    chars = [""] + [chr(int(c)) for c in codec[1:]]
    assert codec[0] == 0 and len(chars) == 107
    assert {"ſ", "ß", "„"} <= set(chars)
    assert chars[1:] == sorted(chars[1:])  # kraken's reader re-sorts: the file must already be sorted
    wgi = data[pyrnn.FORWARD + "WGI"]
    assert wgi.shape[1] - wgi.shape[0] - 1 == 48  # the input height kraken derives


def test_inspect_shows_the_characters(sandbox):
    r = sandbox.run("inspect", str(FRAKTUR), "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert (doc["kind"], doc["input_height"], doc["hidden"], doc["output_classes"]) == ("pyrnn", 48, 100, 107)
    assert doc["executes_code"] == "yes" and "ſ" in doc["codec"] and "„" in doc["codec"]
    text = sandbox.run("inspect", str(FRAKTUR))
    assert "ſ" in text.out and "48" in text.out
    h = sandbox.run("inspect", str(TOY_HDF5), "--json")
    assert h.code == 0, h.err
    hd = json.loads(h.out)
    assert (hd["kind"], hd["input_height"], hd["hidden"], hd["output_classes"], hd["codec"]) == \
        ("pyrnn-bidi", 1, 1, 2, ["", "b"])
    assert hd["executes_code"] == "no"


def test_toy_with_codec_is_krakens_own_file(sandbox, tmp_path):
    out = tmp_path / "toy.hdf5"
    r = sandbox.run("convert", str(TOY_GZ), "-o", str(out), "--codec", "", "--codec", "b")
    assert r.code == 0, r.err
    ours, our_attrs, our_types = _h5(out)
    theirs, their_attrs, their_types = _h5(TOY_HDF5)
    assert sorted(ours) == sorted(theirs) and our_attrs == their_attrs and our_types == their_types
    for name in theirs:
        assert ours[name].shape == theirs[name].shape, name
        assert np.array_equal(ours[name], theirs[name]), name


def test_toy_without_codec_is_refused_clearly(sandbox, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = sandbox.run("convert", str(TOY_GZ), "-o", str(outdir / "toy.hdf5"))
    assert r.code == 2
    assert "no codec" in r.err and "--codec" in r.err and "Traceback" not in r.err
    assert list(outdir.iterdir()) == []  # not even a temp file


def test_compressions_and_misnamed_files_give_identical_output(sandbox, tmp_path):
    plain = tmp_path / "toy.pyrnn"
    plain.write_bytes(gzip.decompress(TOY_GZ.read_bytes()))
    bz = tmp_path / "toy-recompressed.pyrnn.bz2"
    bz.write_bytes(bz2.compress(plain.read_bytes()))
    misnamed = tmp_path / "toy-model"  # gzip without its suffix
    shutil.copy(TOY_GZ, misnamed)
    outputs = []
    for i, src in enumerate((TOY_GZ, TOY_BZ2, plain, bz, misnamed)):
        out = tmp_path / f"out{i}.hdf5"
        r = sandbox.run("convert", str(src), "-o", str(out), "--codec", "", "--codec", "b")
        assert r.code == 0, (src, r.err)
        outputs.append(out.read_bytes())
    assert len(set(outputs)) == 1  # byte-identical, not merely equal arrays


def test_convert_without_the_extra_names_it(sandbox, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    r = sandbox.run("convert", str(FRAKTUR), "-o", str(tmp_path / "x.hdf5"))
    assert r.code == 11
    assert "pip install 'ocrd-modelsync[legacy]'" in r.err
    assert not (tmp_path / "x.hdf5").exists()


def test_decompression_cap(tmp_path):
    bomb = tmp_path / "bomb.pyrnn.gz"
    bomb.write_bytes(gzip.compress(b"(" * (3 << 20)))
    with pytest.raises(UnsafeModel, match="decompresses to more than"):
        safepickle.load(bomb, max_bytes=1 << 20)


# -- hostile pickles --------------------------------------------------------------------------------

def _hostile(marker: str) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    sys_ = b"cos\nsystem\n"
    return {
        "os.system via GLOBAL": sys_ + b"(S'" + cmd + b"'\ntR.",
        "os.system via INST": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "os.system via STACK_GLOBAL": b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd
                                      + b"\x85R.",
        "posix.system": b"cposix\nsystem\n(S'" + cmd + b"'\ntR.",
        "eval (py2 builtins)": b"c__builtin__\neval\n(S'__import__(\"os\").system(\"" + cmd + b"\")'\ntR.",
        "eval (py3 builtins)": b"cbuiltins\neval\n(S'__import__(\"os\").system(\"" + cmd + b"\")'\ntR.",
        "getattr": b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(S'os'\ntRS'system'\ntR(S'" + cmd
                   + b"'\ntR.",
        "defaultdict factory": b"ccollections\ndefaultdict\n(cos\nsystem\ntR.",
        "defaultdict with an admitted but wrong factory": b"ccollections\ndefaultdict\n(cnumpy\ndtype\ntR.",
        "copy_reg reconstructor": b"ccopy_reg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nS'"
                                  + cmd + b"'\ntR.",
        "__class__ key": b"(iocrolib.lstm\nCodec\n(dS'__class__'\nS'x'\nsb.",
        "__reduce__ via __setstate__ key": b"(iocrolib.lstm\nCodec\n(dS'__setstate__'\nS'x'\nsb.",
        "object-dtype array": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
                              b"(I1\n(I1\ntcnumpy\ndtype\n(S'O8'\nI0\nI1\ntRI00\n(lp0\nS'x'\natb.",
        "array payload not bytes": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
                                   b"(I1\n(I1\ntcnumpy\ndtype\n(S'f8'\nI0\nI1\ntRI00\n(lp0\ntb.",
        "array with a lying length": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
                                     b"(I1\n(I1000000000\ntcnumpy\ndtype\n(S'f8'\nI0\nI1\ntRI00\nS'abcdefgh'\ntb.",
        "_reconstruct of another class": b"cnumpy.core.multiarray\n_reconstruct\n(cos\nsystem\n(I0\ntS'b'\ntR.",
        "persistent id": b"P" + cmd + b"\n.",
        "persistent id (binary)": b"\x80\x02U\x04evil" + b"Q.",
        "EXT1 opcode": b"\x80\x02\x82\x01.",
        "EXT2 opcode": b"\x80\x02\x83\x01\x00.",
        "holder called with arguments": b"cocrolib.lstm\nLSTM\n(S'" + cmd + b"'\ntR.",
        "function reference called": b"cocrolib.lstm\nnormalize_nfkc\n(S'x'\ntR.",
        "truncated stream": b"(iocrolib.lstm\nSeqRecognizer\n(dS'Ni'\nI48\n",
    }


@pytest.mark.parametrize("compress", [False, True])
def test_malicious_pickles_are_refused_and_never_run(sandbox, tmp_path, compress):
    marker = tmp_path / "PWNED"
    cases = _hostile(str(marker))
    assert len(cases) >= 13
    for label, payload in cases.items():
        model = tmp_path / "evil.pyrnn.gz"
        model.write_bytes(gzip.compress(payload) if compress else payload)
        with pytest.raises(UnsafeModel, match="unsafe or invalid model"):
            safepickle.load(model)
        for cmd in (("inspect", str(model)), ("convert", str(model), "-o", str(tmp_path / "out.hdf5"))):
            r = sandbox.run(*cmd)
            assert r.code == 10, (label, cmd[0], r.code, r.err)
            assert "unsafe or invalid model" in r.err and "Traceback" not in r.err, (label, r.err)
        assert not marker.exists(), label
        assert not (tmp_path / "out.hdf5").exists(), label


def test_truncated_gzip_and_bomb_through_the_cli(sandbox, tmp_path, monkeypatch):
    truncated = tmp_path / "cut.pyrnn.gz"
    truncated.write_bytes(FRAKTUR.read_bytes()[:100_000])
    r = sandbox.run("inspect", str(truncated))
    assert r.code == 10 and "unsafe or invalid model" in r.err
    monkeypatch.setattr(safepickle, "DEFAULT_MAX_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.pyrnn.gz"
    bomb.write_bytes(gzip.compress(b"(" * (8 << 20)))  # valid opcodes (MARK) all the way: only the cap stops it
    assert len(bomb.read_bytes()) < 100_000
    for cmd in (("inspect", str(bomb)), ("convert", str(bomb), "-o", str(tmp_path / "b.hdf5"))):
        r = sandbox.run(*cmd)
        assert r.code == 10 and "decompresses to more than 1048576 bytes" in r.err, r.err


def _ocrolib_pickle(monkeypatch, build) -> bytes:
    """A protocol-2 pickle naming ocrolib.lstm classes, made with stand-in classes (pure data)."""
    import pickle
    import types

    mod = types.ModuleType("ocrolib.lstm")
    pkg = types.ModuleType("ocrolib")
    for name in ("SeqRecognizer", "Stacked", "Parallel", "LSTM", "LSTM1", "Logreg", "Softmax", "Reversed"):
        cls = type(name, (), {"__module__": "ocrolib.lstm"})
        setattr(mod, name, cls)
    monkeypatch.setitem(sys.modules, "ocrolib", pkg)
    monkeypatch.setitem(sys.modules, "ocrolib.lstm", mod)

    def make(name, **attrs):
        obj = getattr(mod, name)()
        obj.__dict__.update(attrs)
        return obj

    return pickle.dumps(build(make), protocol=2)


def test_valid_pickles_that_are_not_pyrnn_models_are_named(sandbox, tmp_path, monkeypatch):
    cases = {
        "a plain string": (b"\x80\x02X\x05\x00\x00\x00hello.", "found a string ('hello')"),
        "another ocrolib network": (
            _ocrolib_pickle(monkeypatch, lambda make: make("Stacked", nets=[])), "found Stacked"),
        "a SeqRecognizer around an LSTM1": (
            _ocrolib_pickle(monkeypatch, lambda make: make("SeqRecognizer", Ni=48, lstm=make("LSTM1"))),
            "expected Stacked at SeqRecognizer.lstm, found LSTM1"),
        "a SeqRecognizer with a Logreg output": (
            _ocrolib_pickle(monkeypatch, lambda make: make("SeqRecognizer", Ni=48, lstm=make(
                "Stacked", nets=[make("Parallel", nets=()), make("Logreg")]))),
            "expected Softmax at Stacked.nets[1], found Logreg"),
    }
    for label, (payload, expected) in cases.items():
        model = tmp_path / "m.pyrnn"
        model.write_bytes(payload)
        with pytest.raises(UnsafeModel) as err:
            pyrnn.load_model(model)
        assert expected in str(err.value), (label, str(err.value))
        r = sandbox.run("convert", str(model), "-o", str(tmp_path / "o.hdf5"))
        assert r.code == 10 and expected in r.err, (label, r.err)


def test_raw_arrays_check_sizes_before_anything_is_allocated():
    arr = safepickle.RawArray()
    with pytest.raises(UnsafeModel, match="needs"):
        arr.__setstate__((1, (10**12,), safepickle.DType("f8"), False, b"12345678"))
    arr.__setstate__((1, (2,), safepickle.DType("f4"), False, struct.pack("<2f", 1.5, -2.0)))
    assert arr.values() == [1.5, -2.0] and math.prod(arr.shape) == 2


def test_inspect_names_other_formats(sandbox, tmp_path):
    traineddata = tmp_path / "deu.traineddata"
    traineddata.write_bytes(struct.pack("<i", 24) + b"\0" * 200)
    torch_zip = tmp_path / "model.pt"
    import zipfile

    with zipfile.ZipFile(torch_zip, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3\n")
    calamari = tmp_path / "calamari"
    calamari.mkdir()
    (calamari / "0.ckpt.json").write_text("{}")
    (calamari / "0.ckpt.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    mlmodel = tmp_path / "en.mlmodel"
    mlmodel.write_bytes(b"\x08\x04\x12\x00")
    keras = tmp_path / "model.h5"
    with h5py.File(keras, "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f.attrs["model_config"] = "{}"
    expected = {traineddata: ("Tesseract traineddata", "no"), torch_zip: ("PyTorch checkpoint (zip)", "yes"),
                calamari: ("Calamari checkpoint directory", "possible"),
                mlmodel: ("kraken mlmodel (CoreML protobuf)", "no"), keras: ("Keras HDF5 model", "possible")}
    for path, (fmt, code) in expected.items():
        r = sandbox.run("inspect", str(path), "--json")
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        assert (doc["format"], doc["executes_code"]) == (fmt, code), path


# -- automatic conversion during sync ------------------------------------------------------------------

def _converted_dir(sandbox):
    return sandbox.data / "ocrd-modelsync" / "converted"


def test_sync_converts_locks_and_substitutes(sandbox, server):
    data = FRAKTUR.read_bytes()
    url = server.add("/models/fraktur-jze.pyrnn.gz", data)
    sandbox.declare(Model("fraktur-jze.pyrnn.gz", url), processor=PROC, settings="convert_pyrnn = true")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    converted = _converted_dir(sandbox) / sha256(data) / "fraktur-jze.pyrnn.hdf5"
    assert converted.is_file()
    assert f"converted {PROC} fraktur-jze.pyrnn.gz to kraken's HDF5" in r.err, r.err  # sync says so
    lock = sandbox.lock.read_text()
    assert f'converted_sha256 = "{sha256(converted.read_bytes())}"' in lock
    assert (sandbox.data_dir(PROC) / "fraktur-jze.pyrnn.gz").read_bytes() == data  # the original stays
    # status and resolve report the converted path; --disable-autoconversion the pickle
    st = json.loads(sandbox.run("status", "--json").out)["resources"][0]
    assert st["converted"] == str(converted) and st["state"] == "ok"
    assert sandbox.run("resolve", PROC, "fraktur-jze.pyrnn.gz").out.strip() == str(converted)
    off = sandbox.run("resolve", PROC, "fraktur-jze.pyrnn.gz", "--disable-autoconversion")
    assert off.out.strip() == str(sandbox.data_dir(PROC) / "fraktur-jze.pyrnn.gz")
    sandbox.monkeypatch.setenv("MODELSYNC_DISABLE_AUTOCONVERSION", "1")  # the variable does what the flag does
    off = sandbox.run("resolve", PROC, "fraktur-jze.pyrnn.gz")
    assert off.out.strip() == str(sandbox.data_dir(PROC) / "fraktur-jze.pyrnn.gz")
    sandbox.monkeypatch.delenv("MODELSYNC_DISABLE_AUTOCONVERSION")
    # a later run substitutes the existing conversion: nothing converted again, lock unchanged
    before = (converted.stat().st_ino, converted.stat().st_mtime_ns)
    r2 = sandbox.run("sync")
    assert r2.code == 0 and "unchanged" in r2.err and "converted " not in r2.err
    assert (converted.stat().st_ino, converted.stat().st_mtime_ns) == before
    assert sandbox.lock.read_text() == lock
    v = json.loads(sandbox.run("verify", "--json").out)
    assert all(row["ok"] for row in v["resources"]) and len(v["resources"]) == 2


def test_tampered_conversion_is_caught_and_redone(sandbox, server):
    url = server.add("/m/fraktur-jze.pyrnn.gz", FRAKTUR.read_bytes())
    sandbox.declare(Model("fraktur-jze.pyrnn.gz", url, convert=True), processor=PROC)
    assert sandbox.run("sync").code == 0
    converted = next(_converted_dir(sandbox).rglob("*.hdf5"))
    good = converted.read_bytes()
    converted.chmod(0o644)
    converted.write_bytes(good[:-10] + b"0123456789")
    v = sandbox.run("verify")
    assert v.code == 4 and "converted" in v.out
    assert sandbox.run("sync").code == 0
    assert converted.read_bytes() == good  # converted again, same bytes as the lock records


def test_changed_source_and_same_names_never_collide(sandbox, server):
    gz = FRAKTUR.read_bytes()
    plain = gzip.decompress(gz)
    url_a = server.add("/a/model.pyrnn.gz", gz)
    url_b = server.add("/b/model.pyrnn.gz", gzip.compress(plain, mtime=0))  # same model, other bytes
    sandbox.declare(settings="convert_pyrnn = true", processors={
        PROC: [Model("model.pyrnn.gz", url_a)], "ocrd-kraken-recognize": [Model("model.pyrnn.gz", url_b)]})
    assert sandbox.run("sync").code == 0, sandbox.run("sync").err
    paths = sorted(_converted_dir(sandbox).rglob("*.hdf5"))
    assert [p.parent.name for p in paths] == sorted([sha256(gz), sha256(gzip.compress(plain, mtime=0))])
    assert all(p.name == "model.pyrnn.hdf5" for p in paths)
    # a changed source (the declaration points at new bytes) converts again, into a new place
    newer_bytes = gzip.compress(plain, compresslevel=1, mtime=0)
    url_c = server.add("/c/model.pyrnn.gz", newer_bytes)
    sandbox.declare(settings="convert_pyrnn = true", processors={
        PROC: [Model("model.pyrnn.gz", url_c)], "ocrd-kraken-recognize": [Model("model.pyrnn.gz", url_b)]})
    up = sandbox.run("sync")
    assert up.code == 0, up.err
    assert (sandbox.data_dir(PROC) / "model.pyrnn.gz").read_bytes() == newer_bytes
    newer = _converted_dir(sandbox) / sha256(newer_bytes) / "model.pyrnn.hdf5"
    assert newer.is_file()
    assert f'converted_sha256 = "{sha256(newer.read_bytes())}"' in sandbox.lock.read_text()
    assert sandbox.run("resolve", PROC, "model.pyrnn.gz").out.strip() == str(newer)


def test_conversion_switches(sandbox, server):
    url = server.add("/m/fraktur-jze.pyrnn.gz", FRAKTUR.read_bytes())
    sandbox.declare(Model("fraktur-jze.pyrnn.gz", url, convert=False), processor=PROC,
                    settings="convert_pyrnn = true")  # the model's own choice wins
    assert sandbox.run("sync").code == 0
    assert not _converted_dir(sandbox).exists() and "converted_sha256" not in sandbox.lock.read_text()
    sandbox.declare(Model("fraktur-jze.pyrnn.gz", url), processor=PROC, settings="convert_pyrnn = true")
    r = sandbox.run("sync", "--disable-autoconversion")  # the flag: nothing converted this run
    assert r.code == 0 and not _converted_dir(sandbox).exists()
    assert sandbox.run("sync").code == 0 and _converted_dir(sandbox).exists()
    lock = sandbox.lock.read_text()
    assert "converted_sha256" in lock
    assert sandbox.run("sync", "--disable-autoconversion").code == 0
    assert sandbox.lock.read_text() == lock  # switching off for one run does not churn the lock
    st = json.loads(sandbox.run("status", "--json", "--disable-autoconversion").out)["resources"][0]
    assert st["converted"] is None


def test_failed_conversion_fails_that_model_only(sandbox, server):
    ok_url = server.add("/m/other.bin", b"weights")
    toy_url = server.add("/m/toy.pyrnn.gz", TOY_GZ.read_bytes())  # no codec: cannot be converted
    sandbox.declare(Model("toy.pyrnn.gz", toy_url), Model("other.bin", ok_url), processor=PROC,
                    settings="convert_pyrnn = true")
    r = sandbox.run("sync")
    assert r.code == 2 and "toy.pyrnn.gz" in r.err and "no codec" in r.err
    assert (sandbox.data_dir(PROC) / "other.bin").read_bytes() == b"weights"
    assert (sandbox.data_dir(PROC) / "toy.pyrnn.gz").is_file()  # installed and locked, just not converted
    assert "converted_sha256" not in sandbox.lock.read_text() and "toy.pyrnn.gz" in sandbox.lock.read_text()
    assert not list(_converted_dir(sandbox).rglob("*.hdf5"))
