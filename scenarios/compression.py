"""Compression on the demo archive's texts: bytes saved and CPU per MB for br, zstd and
gzip at several levels, compressing in 64 KiB steps as the edge does.

    python -m scenarios.compression [--levels stream,store|all]

Generates the demo archive (small: the texts are the same at any size) into a temporary
folder, takes its compressible files (books, catalogue, SVG), and for each coding and
level measures output size, process CPU time to compress, and to decode. Prints a table
and writes scenarios/out/compression.json.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import tempfile
import time
from pathlib import Path

from edge import compress
from origin.demo import generate

OUT = Path(__file__).resolve().parent / "out"
ALL_LEVELS = {"br": [1, 4, 5, 6, 9, 11], "zstd": [1, 3, 6, 10, 15, 19], "gzip": [1, 5, 6, 9]}


def texts(root: Path) -> list[bytes]:
    found = []
    for path in sorted(root.rglob("*")):
        ctype = mimetypes.guess_type(path.name)[0]
        if path.is_file() and compress.is_compressible(ctype or ""):
            found.append(path.read_bytes())
    return found


def measure(coding: str, level: int, bodies: list[bytes]) -> dict[str, float]:
    total_in = sum(len(b) for b in bodies)
    started = time.process_time()
    outputs = []
    for body in bodies:
        enc = compress.encoder(coding, level)
        parts = [enc.compress(body[i : i + (1 << 16)]) for i in range(0, len(body), 1 << 16)]
        outputs.append(b"".join(parts) + enc.finish())
    cpu = time.process_time() - started
    started = time.process_time()
    for out, body in zip(outputs, bodies, strict=True):
        dec = compress.decoder(coding, len(body) + 1)
        assert dec.decompress(out) + dec.finish() == body
    decode_cpu = time.process_time() - started
    total_out = sum(len(o) for o in outputs)
    mb = total_in / 1e6
    return {
        "bytes_in": total_in,
        "bytes_out": total_out,
        "saved_pct": round(100 * (1 - total_out / total_in), 2),
        "cpu_ms_per_mb": round(1000 * cpu / mb, 2),
        "decode_ms_per_mb": round(1000 * decode_cpu / mb, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="all", help="all, or stream,store (edge's own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), large=False)
        bodies = texts(Path(tmp))
    if args.levels == "all":
        plan = [(c, lv) for c, levels in ALL_LEVELS.items() for lv in levels]
    else:
        chosen = args.levels.split(",")
        plan = sorted({(c, compress.LEVELS[p][c]) for p in chosen for c in compress.CODINGS})
    total = sum(len(b) for b in bodies)
    print(f"compression: {len(bodies)} text files, {total / 1e6:.1f} MB (demo archive)")
    print(f"{'coding':8}{'level':>6}{'saved %':>10}{'CPU ms/MB':>12}{'decode ms/MB':>14}  used for")
    results = []
    for coding, level in plan:
        row = {"coding": coding, "level": level, **measure(coding, level, bodies)}
        uses = [p for p, lv in compress.LEVELS.items() if lv.get(coding) == level]
        row["edge_path"] = ",".join(uses)
        results.append(row)
        print(
            f"{coding:8}{level:>6}{row['saved_pct']:>10.1f}{row['cpu_ms_per_mb']:>12.1f}"
            f"{row['decode_ms_per_mb']:>14.1f}  {row['edge_path']}"
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "compression.json").write_text(
        json.dumps({"bytes": total, "results": results}, indent=2)
    )
    print(f"wrote {OUT / 'compression.json'}")


if __name__ == "__main__":
    main()
