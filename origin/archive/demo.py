"""The demo archive: a sample of what edge's first users serve, written into a folder.

This module owns the sample's content and its generation: plain-text books of readable
pseudo-prose, a JSON catalogue of every item, PNG and SVG images, WAV audio, large
binary bundles and a README. Generation is

- deterministic: seeded, so every run, on every machine, writes the same bytes;
- idempotent: a file already in place is not rewritten (its mtime, and so the ETag the
  origin derives from it, stays the same); a bundle of the wrong size is replaced;
- safe to interrupt: each file is written under a hidden temporary name and renamed into
  place, so no half file is ever kept by a later run or served (the origin hides
  dot-files);
- streaming: bundles are written a MiB at a time, never held whole in memory.

It does not serve anything; `origin.archive.server` does.
"""

from __future__ import annotations

import array
import hashlib
import io
import json
import math
import os
import random
import re
import struct
import sys
import wave
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from origin.archive.server import content_type_for

DEFAULT_SEED = 1851
MIB = 1 << 20

#: (title, author) of the books: invented, so nothing here pretends to be a real text.
BOOKS: tuple[tuple[str, str], ...] = (
    ("The Voyage of the Narwhal", "Margaret Ellery Thorne"),
    ("A History of the Lantern Coast", "Josiah Penhallow"),
    ("The Clockmaker's Daughter", "Henrietta Vane"),
    ("Letters from a Northern Lighthouse", "Edmund Carrow"),
    ("The Salt Road", "Adelaide Morrow"),
    ("On the Keeping of Bees and Orchards", "Rev. Thomas Ashby"),
    ("The Winter Fair at Glasswater", "Clara Dunmore"),
    ("Sermons for Travellers", "Rev. Nathaniel Oakes"),
    ("The Cartographer's Apprentice", "Eliza Fenwick"),
    ("Notes on the Rivers of the Interior", "Captain William Hale"),
    ("The Widow of Ravensmere", "Lucinda Greaves"),
    ("A Treatise upon Tides", "Professor Ambrose Kell"),
    ("The Orchard Letters", "Mary Ann Selwood"),
    ("Tales of the Copper Valley", "Jonas Whitlock"),
    ("The Bookseller of Fleet Lane", "Agnes Hartley"),
    ("Journal of a Winter in the Hills", "Frederick Lowell"),
    ("The Last Ferry to Saint Brannock", "Isobel Quarry"),
    ("Household Receipts and Remedies", "Mrs. Harriet Bell"),
    ("The Astronomer's Garden", "Septimus Crane"),
    ("Songs of the Drowned Village", "Evangeline Marsh"),
)

#: Book sizes spread geometrically over this range (bytes of UTF-8).
BOOK_MIN, BOOK_MAX = 50_000, 2_000_000

#: Bundle names and sizes in MiB: (large, small).
BUNDLES: tuple[tuple[str, int, int], ...] = (
    ("scans-volume-1.bin", 32, 1),
    ("scans-volume-2.bin", 96, 2),
    ("complete-archive.bin", 256, 4),
)


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    """Word classes for the prose; a few non-ASCII words keep the UTF-8 honest."""
    return tuple(w.strip() for w in text.strip().split(sep))


_NOUNS = _words(
    """
    captain harbour lantern river orchard letter window garden road village keeper ship
    tide morning evening winter summer bell clock house door stone field hill shore
    island chapel market bridge candle map journal sea wind storm fire book daughter
    widow traveller stranger sailor merchant doctor farmer apprentice mother father
    brother sister friend voice silence memory promise secret answer question light
    shadow fog rain snow moon star lamp table chair coat hat key café façade fiancée
    rôle
"""
)
_ADJECTIVES = _words(
    """
    old grey quiet distant narrow broad cold warm bright dark small great silent patient
    weary careful strange familiar northern southern empty crowded faded golden pale
    heavy gentle sudden long short low high young ancient naïve
"""
)
_VERBS = _words(
    """
    walked waited looked listened spoke wrote read watched remembered followed carried
    opened closed turned crossed climbed found kept left reached answered considered
    noticed wondered returned began stood sat lingered
"""
)
_PREPOSITIONS = _words(
    """
    toward beside across beyond under over along behind near through upon into against
    among
"""
)
_ADVERBS = _words(
    "slowly, quietly, at last, once more, without a word, for a long while, again, "
    "before dawn, after supper, in the rain, by the fire, alone",
    ",",
)
_LINKS = (", and ", ", but ", "; ", ", while ", ", for ", " — ", ", so that ")

_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(title: str) -> str:
    return _SLUG.sub("-", title.lower()).strip("-")


def book_path(title: str) -> str:
    return f"books/{slugify(title)}.txt"


# ---------------------------------------------------------------- prose


def _clauses(rng: random.Random, n: int) -> list[str]:
    """n clauses like 'the old captain walked slowly toward the grey harbour'."""

    def noun_phrase() -> str:
        det = rng.choice(("the", "the", "a", "her", "his", "their", "that"))
        if rng.random() < 0.5:
            return f"{det} {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        return f"{det} {rng.choice(_NOUNS)}"

    out = []
    for _ in range(n):
        clause = f"{noun_phrase()} {rng.choice(_VERBS)}"
        if rng.random() < 0.4:
            clause += " " + rng.choice(_ADVERBS)
        clause += f" {rng.choice(_PREPOSITIONS)} {noun_phrase()}"
        out.append(clause)
    return out


# Greedy wrap at 72 columns, as Project Gutenberg texts are: the longest run of at most
# 72 characters that ends before a space (or at the end). A regex keeps it in C, which
# matters for ~11 MB of text. No word here is longer than a line.
_WRAP = re.compile(r"(.{1,72})(?: |$)")


def _wrap(text: str) -> str:
    return _WRAP.sub("\\1\n", text).rstrip("\n")


def _roman(n: int) -> str:
    out = ""
    for value, numeral in (
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ):
        while n >= value:
            out += numeral
            n -= value
    return out


def book_text(title: str, author: str, size: int, seed: int) -> Iterator[bytes]:
    """A book of at least `size` UTF-8 bytes: a title line, the author, then chapters
    of wrapped paragraphs. Sentences join clauses from a per-book pool, which keeps
    generation fast while the text still reads (and compresses) like prose."""
    rng = random.Random(f"{seed}:{title}")
    pool = _clauses(rng, 2000)
    head = (
        f"{title}\n\nby {author}\n\n"
        "A sample text of the edge demo archive, generated from a word list; it is\n"
        "in the public domain.\n\n\n"
    ).encode()
    written = len(head)
    yield head
    chapter = 0
    while written < size:
        chapter += 1
        parts = [f"CHAPTER {_roman(chapter)}.\n\n"]
        for _ in range(rng.randint(8, 20)):
            sentences = []
            for _ in range(rng.randint(3, 8)):
                clause = rng.choice(pool)
                for _ in range(rng.choice((0, 1, 1, 2))):
                    clause += rng.choice(_LINKS) + rng.choice(pool)
                sentence = clause[0].upper() + clause[1:] + rng.choice((".", ".", ".", "!", "?"))
                if rng.random() < 0.12:
                    said = rng.choice(("she said", "he said", "I said"))
                    mark = "," if sentence.endswith(".") else sentence[-1]
                    sentence = f"“{sentence[:-1]}{mark}” {said}."
                sentences.append(sentence)
            parts.append(_wrap(" ".join(sentences)) + "\n\n")
        parts.append("\n")
        chunk = "".join(parts).encode()
        written += len(chunk)
        yield chunk


def book_sizes(seed: int) -> list[int]:
    """One size per book, spread geometrically from BOOK_MIN to BOOK_MAX, shuffled."""
    n = len(BOOKS)
    sizes = [int(BOOK_MIN * (BOOK_MAX / BOOK_MIN) ** (i / (n - 1))) for i in range(n)]
    random.Random(seed).shuffle(sizes)
    return sizes


# ---------------------------------------------------------------- images and audio


def png(width: int, height: int, rows: Iterable[bytes], color_type: int = 2) -> bytes:
    """A PNG (8 bits per sample, no interlace): color_type 2 is RGB, 0 greyscale.
    Each row gets filter byte 0 (None)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    text = b"Comment\x00edge demo archive"
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", ihdr),
            chunk(b"tEXt", text),
            chunk(b"IDAT", zlib.compress(raw, 9)),
            chunk(b"IEND", b""),
        )
    )


Pixel = Callable[[int, int], tuple[int, int, int]]


def _rgb_rows(size: int, pixel: Pixel) -> Iterator[bytes]:
    for y in range(size):
        yield bytes(c for x in range(size) for c in pixel(x, y))


Render = Callable[[], bytes]


def _images() -> dict[str, tuple[str, Render]]:
    """name -> (title, renderer) of the sample images: 256x256 PNGs and an SVG."""
    n = 256

    def dawn(x: int, y: int) -> tuple[int, int, int]:
        return (255 - y // 3, 120 + y // 4, 60 + (x + y) // 4)

    def sea(x: int, y: int) -> tuple[int, int, int]:
        return ((x * y) >> 9, 90 + x // 3, 140 + y // 3)

    def moon(x: int, y: int) -> tuple[int, int, int]:
        d = min(255, int(math.hypot(x - 128, y - 96) * 1.6))
        return (255 - d, 255 - d, max(40, 255 - d // 2))

    def engraving() -> Iterator[bytes]:
        for y in range(n):
            yield bytes(((x ^ y) * 3 + (x * x + y * y) // 97) & 0xFF for x in range(n))

    svg = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="240" height="240" viewBox="0 0 240 240">\n'
        b"  <title>Seal of the edge demo archive</title>\n"
        b'  <circle cx="120" cy="120" r="110" fill="#f3ead8" stroke="#5b3a1e" stroke-width="6"/>\n'
        b'  <circle cx="120" cy="120" r="86" fill="none" stroke="#5b3a1e" stroke-width="2"/>\n'
        b'  <path d="M70 150 L120 60 L170 150 Z" fill="#2f5d62"/>\n'
        b'  <text x="120" y="190" font-family="serif" font-size="18" text-anchor="middle"'
        b' fill="#5b3a1e">EDGE ARCHIVE</text>\n'
        b"</svg>\n"
    )
    return {
        "dawn-over-the-harbour.png": (
            "Dawn over the Harbour",
            lambda: png(n, n, _rgb_rows(n, dawn)),
        ),
        "the-open-sea.png": ("The Open Sea", lambda: png(n, n, _rgb_rows(n, sea))),
        "moonrise.png": ("Moonrise", lambda: png(n, n, _rgb_rows(n, moon))),
        "engraving-plate-7.png": (
            "Engraving, Plate 7",
            lambda: png(n, n, engraving(), color_type=0),
        ),
        "archive-seal.svg": ("Seal of the Archive", lambda: svg),
    }


def wav(seconds: float, partials: Iterable[tuple[float, float, float]], rate: int = 22050) -> bytes:
    """A mono 16-bit WAV: a sum of (frequency Hz, amplitude 0..1, decay per second)
    sines, with 20 ms fades so it starts and ends without a click."""
    partials = list(partials)
    frames = int(seconds * rate)
    fade = int(0.02 * rate)
    samples = array.array("h")
    for i in range(frames):
        t = i / rate
        value = sum(a * math.exp(-d * t) * math.sin(2 * math.pi * f * t) for f, a, d in partials)
        envelope = min(1.0, i / fade, (frames - 1 - i) / fade)
        samples.append(int(max(-1.0, min(1.0, value * envelope)) * 32000))
    if samples.itemsize != 2:  # pragma: no cover - 'h' is 16-bit on every platform we run
        raise RuntimeError("array('h') is not 16-bit here")
    if sys.byteorder == "big":  # pragma: no cover - WAV is little-endian
        samples.byteswap()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def _audio() -> dict[str, tuple[str, Render]]:
    """name -> (title, renderer) of the sample recordings."""
    bell = [(220.0, 0.35, 0.8), (440.0, 0.2, 1.2), (587.3, 0.12, 1.8), (880.0, 0.08, 2.5)]
    return {
        "tuning-fork-a440.wav": ("Tuning Fork, A 440 Hz", lambda: wav(3.0, [(440.0, 0.6, 0.3)])),
        "harbour-bell.wav": ("The Harbour Bell", lambda: wav(4.0, bell)),
    }


def bundle_chunks(name: str, mib: int, seed: int) -> Iterator[bytes]:
    """`mib` MiB of seeded random bytes, a MiB at a time; a small bundle is a prefix
    of the large one of the same name."""
    rng = random.Random(f"{seed}:{name}")
    for _ in range(mib):
        yield rng.randbytes(MIB)


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class Item:
    path: str  # relative to the root, with `/`
    collection: str
    title: str
    creator: str | None = None


def _write(target: Path, chunks: Iterable[bytes]) -> None:
    """Write under a hidden temporary name, then rename into place (atomic on POSIX)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _readme(large: bool) -> str:
    bundles = ", ".join(f"{big if large else small} MiB" for _, big, small in BUNDLES)
    return f"""edge demo archive
=================

A sample public-domain archive for trying edge, a CDN for archives. Everything here
is generated (deterministically) by `edge origin --demo`; nothing is a real text.

  books/          {len(BOOKS)} plain-text books (UTF-8), 50 KB to 2 MB each
  images/         PNG images (256x256) and an SVG
  audio/          short WAV recordings (16-bit mono)
  bundles/        large binary bundles ({bundles}), for range requests
                  and read-while-writer at the edge
  catalogue.json  every item: path, title, size, collection, media type, SHA-256

Served by `edge origin`, each response carries a strong ETag, Last-Modified,
Cache-Control from the origin's rules and a Surrogate-Key naming its collection,
so a purge can name one item or a whole collection.
"""


def generate(root: Path, *, large: bool = True, seed: int = DEFAULT_SEED) -> None:
    """Fill `root` (created if needed) with the demo archive. Files already there are
    kept as they are, except a bundle of the wrong size (e.g. after a `large=False`
    run); catalogue.json is rewritten only when what it says has changed."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []

    def put(item: Item, make: Callable[[], Iterable[bytes]], size: int | None = None) -> None:
        target = root / item.path
        if not (target.is_file() and (size is None or target.stat().st_size == size)):
            _write(target, make())
        items.append(item)

    for (title, author), size in zip(BOOKS, book_sizes(seed), strict=True):
        item = Item(book_path(title), "books", title, author)
        put(item, lambda t=title, a=author, s=size: book_text(t, a, s, seed))
    for collection, media in (("images", _images()), ("audio", _audio())):
        for name, (title, render) in media.items():
            put(Item(f"{collection}/{name}", collection, title), lambda r=render: [r()])
    for name, big, small in BUNDLES:
        mib = big if large else small
        title = name.removesuffix(".bin").replace("-", " ").capitalize()
        put(
            Item(f"bundles/{name}", "bundles", title),
            lambda n=name, m=mib: bundle_chunks(n, m, seed),
            size=mib * MIB,
        )

    readme = root / "README.txt"
    if not readme.is_file():
        _write(readme, [_readme(large).encode()])
    catalogue = json.dumps(_catalogue(root, items), indent=2, ensure_ascii=False) + "\n"
    target = root / "catalogue.json"
    if not (target.is_file() and target.read_bytes() == catalogue.encode()):
        _write(target, [catalogue.encode()])


def _catalogue(root: Path, items: list[Item]) -> dict[str, object]:
    """What catalogue.json says: each item as it is on disk now."""
    entries = []
    collections: dict[str, dict[str, int]] = {}
    for item in items:
        path = root / item.path
        size = path.stat().st_size
        entry: dict[str, object] = {
            "path": "/" + item.path,
            "title": item.title,
            "collection": item.collection,
            "media_type": content_type_for(path.name),
            "size": size,
            "sha256": _sha256(path),
        }
        if item.creator:
            entry["creator"] = item.creator
        entries.append(entry)
        totals = collections.setdefault(item.collection, {"items": 0, "bytes": 0})
        totals["items"] += 1
        totals["bytes"] += size
    return {
        "title": "edge demo archive",
        "description": "A generated sample of a public-domain archive, served by edge origin.",
        "collections": collections,
        "items": entries,
    }
