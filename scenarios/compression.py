"""Compression on the demo archive's texts: bytes saved, CPU to encode and speed to decode
for br, zstd and gzip at several levels, the numbers edge.features.compress.LEVELS and MIN_SIZE
are chosen from.

    python -m scenarios.compression            # half the books, 6.1 MB: ~35 s
    python -m scenarios.compression --full     # every book, 11.2 MB: ~55 s
    python -m scenarios.compression --levels edge   # only edge's own levels: ~10 s

1. generates the demo archive (`origin.archive.demo.generate`, small: its texts are the same at
   any size) into a temporary folder and takes the files edge would compress (by the
   Content-Type the demo origin serves them with): the books, catalogue.json, the SVG and
   the README. By default every second book by size, from the largest down (so the sizes
   still span 60 KB to 2 MB and the run stays bounded); `--full` takes all twenty;
2. for each coding and level, compresses every file with `edge.features.compress.encoder`, fed in
   64 KiB pieces as the edge feeds it, with the body's length as size hint, timing with
   `time.process_time` (CPU of this process, encoder set-up included: the edge makes one
   per response). Cheap levels are repeated (up to 5 times, until 0.25 s of CPU) and the
   fastest run kept;
3. decodes each result with `edge.features.compress.decoder` (capped, 64 KiB pieces), checks the
   bytes round-trip, and times it;
4. small bodies: slices of 128 B to 4 KiB from the same texts, at edge's two levels:
   bytes saved per response net of the `Content-Encoding` line, and CPU per response with
   and without the size hint (what MIN_SIZE rests on);
5. prints the tables and writes scenarios/out/compression.json.

It starts no process and opens no socket. CPU figures depend on the machine; the ratios
between levels are what LEVELS rests on.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import brotli
import zstandard

from edge.features import compress
from origin.archive.demo import generate
from origin.archive.server import content_type_for

OUT = Path(__file__).resolve().parent / "out"
PIECE = 64 << 10  # what the edge feeds an encoder at a time
MB = 1e6

#: The levels measured by default: each coding's range, edge's own levels among them.
ALL_LEVELS: dict[str, tuple[int, ...]] = {
    "br": (1, 4, 5, 6, 9, 11),
    "zstd": (1, 3, 6, 10, 11, 15, 19),
    "gzip": (1, 5, 6, 9),
}
SMALL_SIZES = (128, 256, 512, 1024, 1460, 2048, 4096)
#: Repeat a cheap measurement until this much CPU is spent (at most MAX_REPEATS runs).
MIN_CPU, MAX_REPEATS = 0.25, 5


@dataclass(frozen=True)
class Text:
    name: str
    content_type: str
    body: bytes


@dataclass(frozen=True)
class LevelResult:
    coding: str
    level: int
    bytes_in: int
    bytes_out: int
    saved_pct: float
    encode_cpu_ms_per_mb: float
    encode_mb_per_s: float
    decode_mb_per_s: float
    runs: int
    edge_path: str  # "stream", "store", both, or "" when edge does not use this level


@dataclass(frozen=True)
class SmallResult:
    coding: str
    level: int
    path: str
    size: int
    samples: int
    saved_bytes: float  # mean, net of the Content-Encoding field line
    saved_pct: float
    cpu_us: float  # mean CPU per response: encoder set-up, compress, finish
    cpu_us_no_hint: float  # the same without the size hint (length unknown)


def texts(root: Path, *, full: bool) -> list[Text]:
    """The files of the demo archive edge would compress, by the type the origin sends."""
    found = []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        ctype = content_type_for(path.name)
        if path.is_file() and not path.name.startswith(".") and compress.is_compressible(ctype):
            found.append(Text(name, ctype, path.read_bytes()))
    if full:
        return found
    books = sorted((t for t in found if t.name.startswith("books/")), key=lambda t: -len(t.body))
    keep = {t.name for t in books[::2]}
    return [t for t in found if not t.name.startswith("books/") or t.name in keep]


def encode_all(
    coding: str, level: int, corpus: list[Text], *, hint: bool = True
) -> tuple[list[bytes], float]:
    """Every text encoded as the edge does it (with the body's length as size hint, as
    when the length is known, unless `hint` is false); the CPU seconds it took."""
    outputs = []
    started = time.process_time()
    for text in corpus:
        size = len(text.body) if hint else None
        enc = compress.encoder(coding, level, text.content_type, size)
        body = text.body
        parts = [enc.compress(body[i : i + PIECE]) for i in range(0, len(body), PIECE)]
        parts.append(enc.finish())
        outputs.append(b"".join(parts))
    return outputs, time.process_time() - started


def decode_all(coding: str, encoded: list[bytes], corpus: list[Text]) -> float:
    """Every result decoded with edge's capped decoder (checked); the CPU seconds."""
    decoded = []
    started = time.process_time()
    for data in encoded:
        dec = compress.decoder(coding, 64 << 20)
        parts = [
            out for i in range(0, len(data), PIECE) for out in dec.decompress(data[i : i + PIECE])
        ]
        parts.extend(dec.finish())
        decoded.append(b"".join(parts))
    cpu = time.process_time() - started
    for text, body in zip(corpus, decoded, strict=True):
        if body != text.body:
            raise SystemExit(f"compression: {coding} did not round-trip {text.name}")
    return cpu


def edge_path(coding: str, level: int) -> str:
    return ",".join(p for p, levels in compress.LEVELS.items() if levels[coding] == level)


def measure_level(coding: str, level: int, corpus: list[Text]) -> LevelResult:
    total_in = sum(len(t.body) for t in corpus)
    encode_times, decode_times = [], []
    while len(encode_times) < MAX_REPEATS:
        encoded, cpu = encode_all(coding, level, corpus)
        encode_times.append(cpu)
        decode_times.append(decode_all(coding, encoded, corpus))
        if sum(encode_times) + sum(decode_times) >= MIN_CPU:
            break
    total_out = sum(len(e) for e in encoded)
    encode, decode = min(encode_times), min(decode_times)
    return LevelResult(
        coding=coding,
        level=level,
        bytes_in=total_in,
        bytes_out=total_out,
        saved_pct=round(100 * (1 - total_out / total_in), 2),
        encode_cpu_ms_per_mb=round(1000 * encode / (total_in / MB), 2),
        encode_mb_per_s=round(total_in / MB / encode, 1),
        decode_mb_per_s=round(total_in / MB / decode, 1),
        runs=len(encode_times),
        edge_path=edge_path(coding, level),
    )


def slices(corpus: list[Text], size: int) -> list[Text]:
    """Up to four `size`-byte slices of each text (at 0, 1/4, 1/2, 3/4 of it), cut at a
    line start so they read like a small text file."""
    out = []
    for text in corpus:
        body = text.body
        if len(body) < size:
            continue
        starts = {0}
        for k in (1, 2, 3):
            at = body.find(b"\n", k * len(body) // 4) + 1
            if 0 < at <= len(body) - size:
                starts.add(at)
        out += [Text(text.name, text.content_type, body[s : s + size]) for s in sorted(starts)]
    return out


def measure_small(corpus: list[Text]) -> list[SmallResult]:
    results = []
    for size in SMALL_SIZES:
        sample = slices(corpus, size)
        if not sample:
            continue
        for path, levels in compress.LEVELS.items():
            for coding in compress.CODINGS:
                level = levels[coding]
                header = len(f"Content-Encoding: {coding}\r\n")
                runs: list[float] = []
                while sum(runs) < MIN_CPU / 5 and len(runs) < 50:
                    encoded, cpu = encode_all(coding, level, sample)
                    runs.append(cpu)
                bare: list[float] = []
                while sum(bare) < MIN_CPU / 5 and len(bare) < 50:
                    bare.append(encode_all(coding, level, sample, hint=False)[1])
                saved = [
                    len(t.body) - len(e) - header for t, e in zip(sample, encoded, strict=True)
                ]
                results.append(
                    SmallResult(
                        coding=coding,
                        level=level,
                        path=path,
                        size=size,
                        samples=len(sample),
                        saved_bytes=round(statistics.fmean(saved), 1),
                        saved_pct=round(100 * statistics.fmean(saved) / size, 1),
                        cpu_us=round(1e6 * min(runs) / len(sample), 1),
                        cpu_us_no_hint=round(1e6 * min(bare) / len(sample), 1),
                    )
                )
    return results


LEVEL_HEADER = (
    f"{'coding':8}{'level':>6}{'out bytes':>12}{'saved %':>9}{'CPU ms/MB':>11}"
    f"{'enc MB/s':>10}{'dec MB/s':>10}  edge"
)


def level_row(r: LevelResult) -> str:
    return (
        f"{r.coding:8}{r.level:>6}{r.bytes_out:>12}{r.saved_pct:>9.1f}"
        f"{r.encode_cpu_ms_per_mb:>11.1f}{r.encode_mb_per_s:>10.1f}"
        f"{r.decode_mb_per_s:>10.1f}  {r.edge_path}"
    )


def print_small(results: list[SmallResult]) -> None:
    print(
        "\nsmall bodies, mean per response: bytes saved net of the Content-Encoding line,"
        "\nCPU us with the size hint, and (in brackets) without it"
    )
    for path, levels in compress.LEVELS.items():
        heads = "".join(f"{f'{c} {levels[c]}':>22}" for c in compress.CODINGS)
        print(f"{path + ' level':>12}{heads}")
        for size in sorted({r.size for r in results}):
            row = {r.coding: r for r in results if r.size == size and r.path == path}
            cells = "".join(
                f"{f'{r.saved_bytes:.0f} B {r.cpu_us:.0f} ({r.cpu_us_no_hint:.0f}) us':>22}"
                for r in (row[c] for c in compress.CODINGS)
            )
            print(f"{size:>10} B{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="every book, not every second")
    parser.add_argument(
        "--levels", choices=("all", "edge"), default="all", help="edge: only LEVELS' own"
    )
    parser.add_argument("--out", type=Path, default=OUT / "compression.json")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-compression-") as tmp:
        generate(Path(tmp), large=False)
        corpus = texts(Path(tmp), full=args.full)
    total = sum(len(t.body) for t in corpus)
    if args.levels == "all":
        plan = [(c, lv) for c in compress.CODINGS for lv in ALL_LEVELS[c]]
    else:
        plan = sorted(
            {(c, levels[c]) for levels in compress.LEVELS.values() for c in compress.CODINGS},
            key=lambda cl: (compress.CODINGS.index(cl[0]), cl[1]),
        )
    print(
        f"compression: {len(corpus)} texts of the demo archive, {total / MB:.2f} MB "
        f"({'all books' if args.full else 'every second book'}), {PIECE >> 10} KiB pieces"
    )
    print(LEVEL_HEADER)
    results = []
    for coding, level in plan:
        results.append(measure_level(coding, level, corpus))
        print(level_row(results[-1]), flush=True)
    small = measure_small(corpus)
    print_small(small)
    seconds = time.monotonic() - started
    print(f"\nLEVELS = {compress.LEVELS}  MIN_SIZE = {compress.MIN_SIZE}  ({seconds:.0f} s)")

    report = {
        "scenario": "compression",
        "corpus": {
            "files": [t.name for t in corpus],
            "bytes": total,
            "full": args.full,
            "piece_bytes": PIECE,
        },
        "levels": [asdict(r) for r in results],
        "small_bodies": [asdict(r) for r in small],
        "edge": {"LEVELS": compress.LEVELS, "MIN_SIZE": compress.MIN_SIZE},
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "brotli": brotli.__version__,
            "zstandard": zstandard.__version__,
            "zstd": zstandard.ZSTD_VERSION,
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
        },
        "seconds": round(seconds, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
