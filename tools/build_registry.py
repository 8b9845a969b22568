#!/usr/bin/env python3
"""Generate the bundled registry index from real ocrd-tool.json files.

    python tools/build_registry.py [SOURCE_DIR] [-o OUT]

SOURCE_DIR defaults to ../shared/ocrd-tool (48 ocrd-tool.json files, SOURCES.tsv and
the two historical resource lists OCR-D core bundled until v3.8). The output,
ocrd_models/modelsync/data/registry.json, is committed; a test regenerates it and
asserts identical bytes, so the data file never drifts from this script.

Precedence inside the bundled index: for one (processor, name), the entry from the
source with the newest commit date wins; the two historical core lists rank below
every dated ocrd-tool.json ("peak" below "last").
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ocrd_models.modelsync.resources.entry import ResourceEntry  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "ocrd-tool"
DEFAULT_OUT = ROOT / "ocrd_models" / "modelsync" / "data" / "registry.json"
# Historical lists: oldest first. Their rank is below any dated file.
HISTORY = ["history__core_resource_list_peak.yml", "history__core_resource_list_last.yml"]


def read_sources(src: Path) -> list[dict]:
    """Return source descriptors ordered from lowest to highest precedence."""
    rows = {r["saved_as"]: r for r in csv.DictReader(open(src / "SOURCES.tsv"), delimiter="\t")}
    dated = []
    for saved_as, row in rows.items():
        dated.append({
            "file": saved_as,
            "repo": row["repo"],
            "commit": row["commit"] or None,
            "date": row["commit_date"] or None,
            "version": row["version"] or None,
        })
    # Undated rows (a file taken from a wheel) rank as oldest of the dated ones.
    dated.sort(key=lambda s: (s["date"] or "", s["file"]))
    history = [{"file": f, "repo": "OCR-D/core", "commit": None, "date": None, "version": None}
               for f in HISTORY if (src / f).exists()]
    return history + dated


def tools_of(src: Path, source: dict) -> dict[str, dict]:
    """Map executable -> {resource_locations, resources} for one source file."""
    path = src / source["file"]
    if path.suffix == ".yml":
        data = yaml.safe_load(path.read_text()) or {}
        return {exe: {"resources": entries or []} for exe, entries in data.items()}
    return json.loads(path.read_text()).get("tools", {})


def build(src: Path) -> dict:
    """Build the index dict (deterministic: sorted processors, names in source order)."""
    sources = read_sources(src)
    processors: dict[str, dict] = {}
    for rank, source in enumerate(sources):
        origin = f"{source['repo']}@{(source['commit'] or source['version'] or source['file'])[:12]}"
        for exe, tool in sorted(tools_of(src, source).items()):
            proc = processors.setdefault(exe, {"resources": {}, "origins": []})
            if tool.get("resource_locations"):
                proc["resource_locations"] = list(tool["resource_locations"])
            if origin not in proc["origins"]:
                proc["origins"].append(origin)
            for raw in tool.get("resources") or []:
                entry = ResourceEntry.from_ocrd(exe, raw, "bundled").to_json()
                entry.pop("processor")
                entry.pop("source")
                entry["origin"] = origin
                # Later sources rank higher: they replace an earlier entry of the same name.
                proc["resources"][entry["name"]] = entry
    out = {}
    for exe in sorted(processors):
        proc = processors[exe]
        item = {"origins": proc["origins"], "resources": list(proc["resources"].values())}
        if "resource_locations" in proc:
            item["resource_locations"] = proc["resource_locations"]
        out[exe] = item
    return {
        "format": 1,
        "generated_by": "tools/build_registry.py",
        "sources": [{k: v for k, v in s.items() if v is not None} for s in sources],
        "processors": out,
    }


def render(index: dict) -> str:
    """Serialize canonically (one resource per line keeps diffs reviewable)."""
    return json.dumps(index, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    index = build(args.source)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(index), encoding="utf-8")
    n = sum(len(p["resources"]) for p in index["processors"].values())
    print(f"wrote {args.output}: {len(index['processors'])} processors, {n} resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
