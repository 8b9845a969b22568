"""``inspect`` and ``convert``: legacy (pickled) models, opened without executing them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .options import JsonOpt, QuietOpt, VerboseOpt


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A model file or directory.")],
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Name a model's format and whether loading it can execute code.

    For an ocropy/kraken pyrnn pickle (opened by a restricted unpickler, never executed) or a
    kraken pyrnn-bidi HDF5 file: the kind, input height, hidden size, output classes and the
    characters of its codec. Exits 10 for a pickle that holds anything but a pyrnn model.

    \b
    Example: modelsync inspect fraktur-jze.pyrnn.gz
    """
    from dataclasses import asdict

    from . import render
    from ..legacy.formats import identify

    info = identify(model)
    if json_out:
        render.emit_json(asdict(info))
        return
    rows = [("format", info.format), ("loading can execute code", info.executes_code), ("note", info.note)]
    if info.kind:
        rows += [("kind", info.kind), ("input height", str(info.input_height)), ("hidden size", str(info.hidden)),
                 ("output classes", str(info.output_classes))]
        rows.append(("characters", "".join(info.codec[1:]) if info.codec is not None else "(no codec)"))
    rows += [(k.replace("_", " "), str(v)) for k, v in info.details.items()]
    render.table(str(model), ["", ""], rows)


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An ocropy/kraken .pyrnn, .pyrnn.gz or .pyrnn.bz2 model.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="FILE", help="The HDF5 file to write (default: beside the model, its last extension "
                               "replaced by .hdf5, as kraken named it).")] = None,
    codec: Annotated[Optional[list[str]], typer.Option(
        "--codec", metavar="CHAR", help="The characters in code order, code 0 first as '' (repeatable), for "
                                        "a model without a codec.")] = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a pyrnn pickle to kraken's pyrnn-bidi HDF5 (numbers only), atomically.

    The pickle is read by a restricted unpickler: nothing in it is executed. Needs the
    legacy extra: pip install 'ocrd-modelsync[legacy]'.

    \b
    Examples:
      modelsync convert fraktur-jze.pyrnn.gz                  # -> fraktur-jze.pyrnn.hdf5
      modelsync convert toy.pyrnn.gz -o toy.hdf5 --codec '' --codec b
    """
    from ..legacy import hdf5model, pyrnn
    from . import render
    from ..legacy.autoconvert import converted_name
    from ..digest import sha256_file

    hdf5model.check_extra()
    target = output or model.with_name(converted_name(model.name))
    m = pyrnn.load_model(model)
    if codec:
        m = pyrnn.with_codec(m, codec)
    elif m.codec is None:
        from ..errors import UserInputError

        raise UserInputError(f"{model.name} has no codec, so its characters are unknown: give them in code "
                             "order with --codec, code 0 first as '' (e.g. --codec '' --codec a --codec b)")
    hdf5model.write(m, target)
    sha = sha256_file(target)
    if json_out:
        render.emit_json({"source": str(model), "output": str(target), "sha256": sha,
                          "input_height": m.input_height, "hidden": m.hidden, "output_classes": m.output_classes})
        return
    render.say(f"wrote {target} (sha256 {sha}): input height {m.input_height}, hidden {m.hidden}, "
               f"{m.output_classes} classes")
