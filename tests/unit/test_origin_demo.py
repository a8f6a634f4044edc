"""The demo archive generator: what it writes is present, valid by each format's own
rules (PNG chunks and CRCs, WAV headers, JSON, UTF-8 text), deterministic, idempotent,
and never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
import wave
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from origin.archive import demo
from origin.archive.server import content_type_for

COLLECTIONS = ("books", "images", "audio", "bundles")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "archive"
    started = time.monotonic()
    demo.generate(root, large=False)
    # Small mode is what tests and `edge up --small` use; it must start quickly.
    assert time.monotonic() - started < 10
    return root


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (mtime_ns, inode) of every file, hidden ones included."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        yield tag, body
        pos += 12 + length


def test_layout(archive: Path):
    assert sorted(p.name for p in archive.iterdir()) == [
        "README.txt",
        "audio",
        "books",
        "bundles",
        "catalogue.json",
        "images",
    ]
    assert len(list((archive / "books").iterdir())) == 20
    assert (archive / "books" / "the-voyage-of-the-narwhal.txt").is_file()
    assert len(list((archive / "images").glob("*.png"))) >= 3
    assert len(list((archive / "audio").glob("*.wav"))) >= 1
    assert "edge demo archive" in (archive / "README.txt").read_text()
    assert not [p for p in archive.rglob(".*")], "no temporary file is left behind"


def test_books_are_utf8_prose_with_a_title_line(archive: Path):
    sizes = []
    titles = {demo.book_path(title): title for title, _ in demo.BOOKS}
    for path in sorted((archive / "books").iterdir()):
        text = path.read_bytes().decode("utf-8")  # strict: raises on invalid UTF-8
        assert text.splitlines()[0] == titles[f"books/{path.name}"]
        assert "CHAPTER I.\n" in text
        assert max(len(line) for line in text.splitlines()) <= 80
        sizes.append(len(text.encode()))
    assert demo.BOOK_MIN <= min(sizes) < 60_000
    assert 2_000_000 <= max(sizes) < 2_100_000
    joined = "".join(p.read_text() for p in (archive / "books").iterdir())
    assert any(ord(c) > 127 for c in joined)
    assert len(set(joined.split())) > 150  # a vocabulary, not one repeated phrase


def test_pngs_are_valid(archive: Path):
    for path in (archive / "images").glob("*.png"):
        chunks = list(png_chunks(path.read_bytes()))
        tags = [tag for tag, _ in chunks]
        assert tags[0] == b"IHDR" and tags[-1] == b"IEND", path
        width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
        assert (width, height, depth, interlace) == (256, 256, 8, 0)
        channels = {0: 1, 2: 3}[color]
        raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
        stride = 1 + width * channels
        assert len(raw) == height * stride
        assert all(raw[y * stride] == 0 for y in range(height))  # filter type None
        assert len(set(raw)) > 16  # a picture, not a flat colour
    ET.fromstring((archive / "images" / "archive-seal.svg").read_bytes())


def test_wavs_are_valid(archive: Path):
    for path in (archive / "audio").glob("*.wav"):
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
            seconds = w.getnframes() / w.getframerate()
            frames = w.readframes(w.getnframes())
        assert 1 <= seconds <= 10
        samples = struct.unpack(f"<{len(frames) // 2}h", frames)
        assert max(samples) > 5000 and min(samples) < -5000  # an audible tone


def test_bundles_small_sizes_and_prefix_of_the_large_ones(archive: Path):
    for name, _, small in demo.BUNDLES:
        path = archive / "bundles" / name
        assert path.stat().st_size == small * demo.MIB
        first_large_mib = next(demo.bundle_chunks(name, 1, demo.DEFAULT_SEED))
        with open(path, "rb") as f:
            assert f.read(demo.MIB) == first_large_mib


def test_catalogue_describes_every_item_as_it_is_on_disk(archive: Path):
    catalogue = json.loads((archive / "catalogue.json").read_bytes())
    items = {item["path"]: item for item in catalogue["items"]}
    on_disk = {
        "/" + str(p.relative_to(archive)) for c in COLLECTIONS for p in (archive / c).iterdir()
    }
    assert set(items) == on_disk
    for path, item in items.items():
        file = archive / path.lstrip("/")
        data = file.read_bytes()
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        assert item["collection"] == path.split("/")[1]
        assert item["media_type"] == content_type_for(file.name)
        assert item["title"]
    narwhal = items["/books/the-voyage-of-the-narwhal.txt"]
    assert (narwhal["title"], narwhal["creator"]) == (
        "The Voyage of the Narwhal",
        "Margaret Ellery Thorne",
    )
    books = catalogue["collections"]["books"]
    assert books["items"] == 20
    assert books["bytes"] == sum(i["size"] for i in items.values() if i["collection"] == "books")


def test_second_run_rewrites_nothing(archive: Path):
    before = files_of(archive)
    demo.generate(archive, large=False)
    assert files_of(archive) == before


def test_deterministic(archive: Path, tmp_path: Path):
    other = tmp_path / "again"
    demo.generate(other, large=False)
    # The catalogue holds the SHA-256 of every item, so equal catalogues mean equal bytes.
    assert (other / "catalogue.json").read_bytes() == (archive / "catalogue.json").read_bytes()
    assert (other / "README.txt").read_bytes() == (archive / "README.txt").read_bytes()


def test_repairs_missing_and_wrong_sized_files_and_updates_the_catalogue(
    archive: Path, tmp_path: Path
):
    root = tmp_path / "copy"
    shutil.copytree(archive, root)
    book = root / "books" / "the-salt-road.txt"
    original = book.read_bytes()
    book.unlink()
    bundle = root / "bundles" / "scans-volume-1.bin"
    bundle.write_bytes(b"truncated")
    untouched = root / "images" / "moonrise.png"
    mtime = untouched.stat().st_mtime_ns

    demo.generate(root, large=False)
    assert book.read_bytes() == original
    assert bundle.stat().st_size == 1 * demo.MIB
    assert untouched.stat().st_mtime_ns == mtime
    assert (root / "catalogue.json").read_bytes() == (archive / "catalogue.json").read_bytes()


def test_an_interrupted_write_leaves_nothing(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "copy"
    shutil.copytree(archive, root)
    (root / "bundles" / "complete-archive.bin").unlink()

    def failing(name: str, mib: int, seed: int) -> Iterator[bytes]:
        yield b"\0" * demo.MIB
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo, "bundle_chunks", failing)
    with pytest.raises(OSError):
        demo.generate(root, large=False)
    assert not (root / "bundles" / "complete-archive.bin").exists()
    assert not list(root.rglob(".*"))


def test_png_helper_writes_greyscale_and_rgb():
    grey = demo.png(2, 1, [b"\x00\xff"], color_type=0)
    rgb = demo.png(1, 1, [b"\x01\x02\x03"])
    for data, expected in ((grey, b"\x00\x00\xff"), (rgb, b"\x00\x01\x02\x03")):
        chunks = dict(png_chunks(data))
        assert zlib.decompress(chunks[b"IDAT"]) == expected
