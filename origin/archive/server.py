"""The archive origin: an aiohttp application that serves a directory the way a static
origin (nginx with `root`, `etag` and `expires`) does.

This module owns mapping a URL path to a file confined to the root, the metadata of
what it sends (strong ETag, Last-Modified, Content-Type, Surrogate-Key), conditional
requests (RFC 9110 Section 13) and byte ranges (RFC 9110 Section 14), directory
listings, the server's lifetime (`start`, `run`), and an optional delay before every
response (`latency`), which makes it behave like a distant origin. Cache-Control comes
from `origin.archive.rules`; the sample content from `origin.archive.demo`.

The RFC logic here is written on purpose without the edge engine's helpers: this
origin is the reference the edge is tested against, so a bug in one should not be
hidden by the same bug in the other. The RFC functions are pure (no I/O, no clock).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import itertools
import json
import logging
import math
import mimetypes
import os
import re
import secrets
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web
from aiohttp.log import access_logger
from aiohttp.typedefs import Handler, Middleware

from origin.archive.rules import CacheRules

log = logging.getLogger("origin.archive")

ALLOW = "GET, HEAD"
SERVER = "edge-origin"

#: RFC 9110 Section 14.2 lets a server ignore a Range with too many ranges; more than
#: this many is treated as abuse and the whole representation is sent (200).
MAX_RANGES = 16

#: Read size when a span cannot go through sendfile.
CHUNK = 256 * 1024


class Headers(Protocol):
    """The read side of a case-insensitive multi-mapping (aiohttp's request headers)."""

    def getall(self, key: str, default: list[str] = ...) -> list[str]: ...

    def get(self, key: str, default: str | None = None) -> str | None: ...


# ---------------------------------------------------------------- URL path -> file


class BadPath(ValueError):
    """The request target cannot name a file under the root: answered 400."""


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def path_segments(raw_path: str) -> tuple[list[str], bool]:
    """Decode a raw URL path (as on the wire, without the query) into its segments and
    whether it ends with `/`.

    Percent-decoding happens once, here, before any check, so `%2e%2e` is seen as `..`.
    Malformed escapes, invalid UTF-8, control characters (NUL among them), backslashes
    (a path separator elsewhere) and `.`/`..` segments raise BadPath. Empty segments
    collapse, as nginx's merge_slashes does.
    """
    if not raw_path.startswith("/"):
        raise BadPath("the path must start with /")
    if _BAD_PERCENT.search(raw_path):
        raise BadPath("malformed percent-encoding")
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPath("the path is not UTF-8") from exc
    if _CONTROL.search(decoded):
        raise BadPath("control character or backslash in the path")
    segments = [s for s in decoded.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise BadPath("dot segment in the path")
    return segments, decoded.endswith("/")


def resolve(root: Path, segments: list[str]) -> Path | None:
    """The real path that `segments` name under `root` (itself a real path), or None
    when it is hidden (a dot-file, e.g. `.git`) or lies outside the root once symlinks
    are followed."""
    if any(s.startswith(".") for s in segments):
        return None
    real = os.path.realpath(os.path.join(root, *segments))
    return Path(real) if _visible_inside(root, real) else None


def _visible_inside(root: Path, real: str) -> bool:
    """Is the real path `real` under `root` and not hidden? (A symlink inside the root
    may point outside it, or at a dot-file.)"""
    if os.path.commonpath([root, real]) != str(root):
        return False
    relative = os.path.relpath(real, root)
    return relative == "." or not any(p.startswith(".") for p in relative.split(os.sep))


# ---------------------------------------------------------------- metadata


def _make_types() -> mimetypes.MimeTypes:
    # The built-in table only (not /etc/mime.types), so every machine answers alike.
    types = mimetypes.MimeTypes()
    # A .tar.gz is served as what it is (application/gzip), never as a tar with
    # Content-Encoding: gzip, which clients would unpack on the fly.
    types.encodings_map.clear()
    for ctype, ext in (
        ("application/gzip", ".gz"),
        ("application/x-bzip2", ".bz2"),
        ("application/x-xz", ".xz"),
        ("application/zstd", ".zst"),
        ("application/epub+zip", ".epub"),
        ("audio/wav", ".wav"),
        ("audio/flac", ".flac"),
        ("audio/ogg", ".ogg"),
        ("audio/ogg", ".opus"),
        ("image/webp", ".webp"),
        ("text/markdown", ".md"),
    ):
        types.add_type(ctype, ext)
    return types


_TYPES = _make_types()


def content_type_for(name: str) -> str:
    """Content-Type for a file name: text types are declared UTF-8, JSON is
    application/json (RFC 8259 defines no charset), the rest application/octet-stream
    when unknown."""
    ctype = _TYPES.guess_type(name, strict=False)[0] or "application/octet-stream"
    if ctype.startswith("text/"):
        ctype += "; charset=utf-8"
    return ctype


def etag_for(st: os.stat_result) -> str:
    """A strong ETag from size, mtime (ns) and inode: any write changes the mtime, and
    a file replaced by rename (even with the same size and a copied mtime) gets a new
    inode. The price is that two replicas of one file have different ETags."""
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'


def http_date(seconds: float) -> str:
    """RFC 9110 Section 5.6.7: IMF-fixdate."""
    return formatdate(seconds, usegmt=True)


def parse_http_date(value: str | None) -> int | None:
    """RFC 9110 Section 5.6.7: HTTP-date in any of its three forms, as whole seconds
    since the epoch; None when absent or invalid."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


# Characters kept as they are in a Surrogate-Key; the rest (space first: it separates
# keys) is percent-encoded.
_KEY_SAFE = "/-._~!$&'()*+,;=:@"


def surrogate_keys(segments: list[str], is_dir: bool) -> str:
    """Surrogate-Key (space-separated, as Fastly reads it): the collection (top-level
    folder) the path belongs to, then the path itself without its leading `/`, so a
    purge can name a whole collection or one item. The root listing's key is `/`."""
    if not segments:
        return "/"
    path = "/".join(segments) + ("/" if is_dir else "")
    keys = [segments[0], path] if is_dir or len(segments) > 1 else [path]
    return " ".join(quote(k, safe=_KEY_SAFE) for k in dict.fromkeys(keys))


def prefers_json(accept: str | None) -> bool:
    """Content negotiation for listings (RFC 9110 Section 12.5.1), HTML unless the
    client prefers application/json: by q-value, and on a tie the type named outright
    beats one reached through a wildcard (so `application/json, */*` gets JSON)."""
    if not accept:
        return False
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = item.split(";")
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        weights[media.strip().lower()] = q

    def score(media: str) -> tuple[float, int]:
        if media in weights:
            return weights[media], 2
        wildcard = media.split("/")[0] + "/*"
        if wildcard in weights:
            return weights[wildcard], 1
        return weights.get("*/*", 0.0), 0

    json_score = score("application/json")
    return json_score[0] > 0 and json_score > score("text/html")


# ------------------------------------------------- RFC 9110 Sections 13 and 14, pure


@dataclass(frozen=True)
class Validators:
    """The validators of the selected representation (RFC 9110 Section 8.8)."""

    etag: str  # strong and quoted
    last_modified: int | None = None  # whole seconds, as sent in Last-Modified
    # Section 8.8.2.2: a Last-Modified date is a strong validator only when it is at
    # least a second older than the response; only then may If-Range use it.
    date_is_strong: bool = False


_ENTITY_TAG = re.compile(r'(?:W/)?"[^"\x00-\x20\x7f]*"')


def parse_etag_list(value: str) -> list[str] | None:
    """RFC 9110 Sections 13.1.1/13.1.2: `*` (None) or a list of entity-tags; text
    that is not an entity-tag is skipped, so it can never match."""
    if value.strip() == "*":
        return None
    return _ENTITY_TAG.findall(value)


def etag_matches(field_value: str, etag: str, *, weak: bool) -> bool:
    """Does the If-Match / If-None-Match value match `etag` (Section 8.8.3.2)? Strong
    comparison needs both tags strong and equal; weak comparison ignores `W/`."""
    tags = parse_etag_list(field_value)
    if tags is None:
        return True
    if weak:
        return any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags)
    return not etag.startswith("W/") and etag in tags


def evaluate_preconditions(method: str, headers: Headers, v: Validators) -> int | None:
    """RFC 9110 Section 13.2.2: Precedence of Preconditions. Returns 412, 304 or None
    (go on), evaluating in the order the section sets:

    1. If-Match (strong comparison): false -> 412.
    2. Else If-Unmodified-Since (ignored when If-Match is present or the date is
       invalid): modified after it -> 412.
    3. If-None-Match (weak comparison): true match -> 304 for GET/HEAD, else 412.
    4. Else, for GET/HEAD only, If-Modified-Since: not modified since -> 304.
    """
    if_match = headers.getall("If-Match", [])
    if if_match:
        if not etag_matches(", ".join(if_match), v.etag, weak=False):
            return 412
    else:
        since = parse_http_date(headers.get("If-Unmodified-Since"))
        if since is not None and v.last_modified is not None and v.last_modified > since:
            return 412
    safe = method in ("GET", "HEAD")
    if_none_match = headers.getall("If-None-Match", [])
    if if_none_match:
        if etag_matches(", ".join(if_none_match), v.etag, weak=True):
            return 304 if safe else 412
    elif safe:
        since = parse_http_date(headers.get("If-Modified-Since"))
        if since is not None and v.last_modified is not None and v.last_modified <= since:
            return 304
    return None


def if_range_holds(value: str, v: Validators) -> bool:
    """RFC 9110 Section 13.1.5: If-Range. True (send the range) when the entity-tag
    matches by strong comparison, or the date equals Last-Modified and that date is a
    strong validator; anything else, a weak tag included, means send it all (200)."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        return not value.startswith("W/") and value == v.etag
    date = parse_http_date(value)
    return date is not None and v.date_is_strong and date == v.last_modified


class Unsatisfiable(Exception):
    """RFC 9110 Section 15.5.17: a valid Range of which no range overlaps the
    representation: answered 416."""


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
# Past this many digits a position is beyond any file; capping avoids int() on a
# thousands-digit string (Python refuses those) without changing the answer.
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | None:
    """RFC 9110 Section 14.1.2: a Range field against a representation of `size`
    bytes, as (first, last) inclusive pairs.

    Returns None when the field must be ignored and the whole representation sent:
    another unit, invalid syntax, a range whose last position precedes its first, more
    than MAX_RANGES ranges, or an empty representation (no byte range can be written
    for it). Raises Unsatisfiable when it is valid but no range is satisfiable.
    Overlapping or adjacent ranges are coalesced (Section 14.2), so a request never
    costs more than the whole; disjoint ranges keep the order they were asked in.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs: list[tuple[str, str]] = []
    for member in spec.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # the list syntax (Section 5.6.1) allows empty elements
        match = _RANGE_SPEC.fullmatch(member)
        if match is None or not (match[1] or match[2]):
            return None
        specs.append((match[1], match[2]))
    if not specs or len(specs) > MAX_RANGES or size == 0:
        return None
    ranges: list[tuple[int, int]] = []
    for first, last in specs:
        if first:
            start = _position(first)
            if last and _position(last) < start:
                return None  # Section 14.1.1: an invalid range-spec voids the field
            if start < size:
                end = _position(last) if last else size - 1
                ranges.append((start, min(end, size - 1)))
        elif (suffix := _position(last)) > 0:
            ranges.append((max(0, size - suffix), size - 1))
    if not ranges:
        raise Unsatisfiable
    return coalesce(ranges)


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping or adjacent ranges (sorted); keep disjoint ones as asked."""
    ordered = sorted(ranges)
    if all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ordered)):
        return ranges
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        if start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def multipart_heads(
    ranges: list[tuple[int, int]], size: int, content_type: str, boundary: str
) -> tuple[list[bytes], bytes]:
    """RFC 9110 Section 14.6: the head of each part of a multipart/byteranges body and
    the closing delimiter. The CRLF before each later delimiter belongs to it
    (RFC 2046 Section 5.1.1), so a part's bytes end exactly where its range does."""
    heads = []
    for i, (start, end) in enumerate(ranges):
        lead = "" if i == 0 else "\r\n"
        heads.append(
            f"{lead}--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
        )
    return heads, f"\r\n--{boundary}--\r\n".encode()


# ---------------------------------------------------------------- responses


@dataclass
class Entity:
    """The selected representation: its metadata, the fields every response about it
    carries, and where its bytes come from (an open file, or memory for listings)."""

    size: int
    content_type: str
    validators: Validators
    fields: dict[str, str] = field(default_factory=dict)
    file: BinaryIO | None = None
    data: bytes = b""

    def validator_fields(self) -> dict[str, str]:
        """What a 200, 206 or 304 for this representation carries (RFC 9110 Section
        15.4.5: a 304 has the fields a 200 would, minus the content's own)."""
        out = {"ETag": self.validators.etag}
        if self.validators.last_modified is not None:
            out["Last-Modified"] = http_date(self.validators.last_modified)
        out.update(self.fields)
        return out


def _plain(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A short text/plain error; the request is never echoed back."""
    reason = HTTPStatus(status).phrase
    return web.Response(status=status, text=f"{status} {reason}\n", headers=headers)


async def _send_span(
    request: web.BaseRequest, resp: web.StreamResponse, entity: Entity, start: int, count: int
) -> bool:
    """Write `count` bytes of the entity from `start`. From a file this is sendfile
    (as aiohttp's FileResponse does), with chunked reads where the transport cannot
    (TLS). False when the file turned out shorter than it was (truncated meanwhile)."""
    if entity.file is None:
        await resp.write(entity.data[start : start + count])
        return True
    if count == 0:
        return True
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    try:
        sent = await loop.sendfile(transport, entity.file, start, count, fallback=False)
        return sent == count
    except (NotImplementedError, asyncio.SendfileNotAvailableError):
        pass  # no native sendfile on this transport (TLS, uvloop): read and write
    file = entity.file
    offset, left = start, count
    while left:
        chunk = await asyncio.to_thread(_pread, file, offset, min(CHUNK, left))
        if not chunk:
            return False
        await resp.write(chunk)
        offset += len(chunk)
        left -= len(chunk)
    return True


def _pread(file: BinaryIO, offset: int, count: int) -> bytes:
    return os.pread(file.fileno(), count, offset)


async def respond(request: web.BaseRequest, entity: Entity) -> web.StreamResponse:
    """Answer a GET or HEAD for `entity`: preconditions, then ranges, then the body."""
    if status := evaluate_preconditions(request.method, request.headers, entity.validators):
        if status == 412:
            return _plain(412)
        resp = web.StreamResponse(status=304, headers=entity.validator_fields())
        await resp.prepare(request)
        await resp.write_eof()
        return resp

    fields = entity.validator_fields()
    fields["Accept-Ranges"] = "bytes"
    ranges: list[tuple[int, int]] | None = None
    range_fields = request.headers.getall("Range", [])
    if_range = request.headers.get("If-Range")
    # Section 14.2: range handling is defined for GET only; a Range on any other
    # method, or repeated (ambiguous), or with a failing If-Range, is ignored.
    if (
        request.method == "GET"
        and len(range_fields) == 1
        and (if_range is None or if_range_holds(if_range, entity.validators))
    ):
        try:
            ranges = parse_ranges(range_fields[0], entity.size)
        except Unsatisfiable:
            return _plain(416, {"Content-Range": f"bytes */{entity.size}", **fields})

    if ranges is None:
        parts: list[tuple[bytes, int, int]] = [(b"", 0, entity.size)]
        tail = b""
        resp = web.StreamResponse(status=200, headers=fields)
        resp.content_type = entity.content_type
    elif len(ranges) == 1:
        start, end = ranges[0]
        parts = [(b"", start, end - start + 1)]
        tail = b""
        fields["Content-Range"] = f"bytes {start}-{end}/{entity.size}"
        resp = web.StreamResponse(status=206, headers=fields)
        resp.content_type = entity.content_type
    else:
        boundary = secrets.token_hex(16)
        heads, tail = multipart_heads(ranges, entity.size, entity.content_type, boundary)
        parts = [(h, s, e - s + 1) for h, (s, e) in zip(heads, ranges, strict=True)]
        fields["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        resp = web.StreamResponse(status=206, headers=fields)
    resp.content_length = sum(len(h) + n for h, _, n in parts) + len(tail)
    await resp.prepare(request)
    if request.method == "HEAD":
        await resp.write_eof()
        return resp
    try:
        for head, start, count in parts:
            if head:
                await resp.write(head)
            if not await _send_span(request, resp, entity, start, count):
                # The file shrank under us: close the connection so the client sees a
                # short body instead of waiting for bytes that will never come.
                log.warning("%s shrank while being sent; closing the connection", request.path)
                resp.force_close()
                break
        else:
            if tail:
                await resp.write(tail)
        await resp.write_eof()
    except ConnectionError:
        resp.force_close()  # the client went away; nothing left to do
    return resp


# ---------------------------------------------------------------- listings


def _listing(root: Path, directory: Path, url_path: str, as_json: bool) -> bytes:
    """A directory listing (HTML or JSON): dot-files and anything that resolves
    outside the root are left out; folders first."""
    rows: list[tuple[bool, str, int, float]] = []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if not _visible_inside(root, os.path.realpath(entry.path)):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # a broken symlink
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                rows.append((stat.S_ISDIR(st.st_mode), entry.name, st.st_size, st.st_mtime))
    rows.sort(key=lambda r: (not r[0], r[1]))
    if as_json:
        entries = [
            {
                "name": name + ("/" if is_dir else ""),
                "path": url_path + name + ("/" if is_dir else ""),
                "type": "directory" if is_dir else "file",
                **({} if is_dir else {"size": size}),
                "last_modified": datetime.fromtimestamp(int(mtime), UTC).isoformat(),
            }
            for is_dir, name, size, mtime in rows
        ]
        return json.dumps({"path": url_path, "entries": entries}, indent=1).encode() + b"\n"
    title = html.escape(f"Index of {url_path}")
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title></head>",
        f"<body><h1>{title}</h1>",
        "<table><thead><tr><th>Name</th><th>Size</th><th>Last modified</th></tr></thead>",
        "<tbody>",
    ]
    if url_path != "/":
        lines.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
    for is_dir, name, size, mtime in rows:
        shown = name + ("/" if is_dir else "")
        href = quote(shown, safe="/")
        lines.append(
            f'<tr><td><a href="{href}">{html.escape(shown)}</a></td>'
            f"<td>{'' if is_dir else size}</td><td>{http_date(int(mtime))}</td></tr>"
        )
    lines += ["</tbody></table></body></html>", ""]
    return "\n".join(lines).encode()


# ---------------------------------------------------------------- the application


def _open(target: Path) -> tuple[BinaryIO | None, os.stat_result]:
    """(None, stat) for a directory, (open file, fstat) for a regular file; anything
    else (a FIFO would block the reader, a device is not content) is not found."""
    st = os.stat(target)
    if stat.S_ISDIR(st.st_mode):
        return None, st
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(target)
    file = open(target, "rb")  # noqa: SIM115 - closed by the handler after sending
    try:
        # fstat, not the stat above: the headers must describe the file being sent.
        st = os.fstat(file.fileno())
    except OSError:
        file.close()
        raise
    return file, st


class Archive:
    """The request handler for one root directory."""

    def __init__(self, root: Path, rules: CacheRules) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a directory: {root}")
        self.rules = rules

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _plain(405, {"Allow": ALLOW})
        try:
            segments, trailing_slash = path_segments(request.rel_url.raw_path)
        except BadPath:
            return _plain(400)
        target = resolve(self.root, segments)
        if target is None:
            return _plain(404)
        try:
            file, st = await asyncio.to_thread(_open, target)
        except PermissionError:
            return _plain(403)
        except OSError:  # not found, not a directory, a loop of symlinks
            return _plain(404)
        if file is None:
            return await self._directory(request, target, segments, trailing_slash)
        try:
            if trailing_slash:
                return _plain(404)  # a file is not a folder
            url_path = "/" + "/".join(segments)
            now = time.time()
            entity = Entity(
                size=st.st_size,
                content_type=content_type_for(segments[-1]),
                validators=Validators(
                    etag_for(st),
                    # RFC 9110 Section 8.8.2.1: never a Last-Modified later than Date;
                    # a file dated in the future is sent as modified now.
                    int(min(st.st_mtime, now)),
                    date_is_strong=now - st.st_mtime >= 1,
                ),
                fields={
                    "Cache-Control": self.rules.cache_control(url_path),
                    "Surrogate-Key": surrogate_keys(segments, is_dir=False),
                },
                file=file,
            )
            return await respond(request, entity)
        finally:
            file.close()

    async def _directory(
        self, request: web.Request, target: Path, segments: list[str], trailing_slash: bool
    ) -> web.StreamResponse:
        url_path = "/" + "".join(s + "/" for s in segments)
        if segments and not trailing_slash:
            # As nginx does: relative links in the listing need the trailing slash.
            location = quote(url_path, safe="/")
            if request.rel_url.raw_query_string:
                location += "?" + request.rel_url.raw_query_string
            return _plain(301, {"Location": location})
        as_json = prefers_json(request.headers.get("Accept"))
        body = await asyncio.to_thread(_listing, self.root, target, url_path, as_json)
        entity = Entity(
            size=len(body),
            content_type="application/json" if as_json else "text/html; charset=utf-8",
            # No Last-Modified: a folder's mtime misses changes to the files in it.
            validators=Validators('"' + hashlib.sha256(body).hexdigest()[:32] + '"'),
            fields={
                "Cache-Control": self.rules.cache_control(url_path),
                "Surrogate-Key": surrogate_keys(segments, is_dir=True),
                "Vary": "Accept",
            },
            data=body,
        )
        return await respond(request, entity)


ARCHIVE_KEY = web.AppKey("archive", Archive)


def check_latency(seconds: float) -> float:
    """`seconds` if it is a usable delay (finite, >= 0), else ValueError (one line)."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds:g}")
    return seconds


def parse_latency(text: str) -> float:
    """'0.2' -> 0.2 seconds; a negative, non-finite or non-numeric value raises ValueError
    with a one-line message."""
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"latency must be a number of seconds, got {text!r}") from None
    return check_latency(seconds)


def _delay(latency: float) -> Middleware:
    """A middleware that waits `latency` seconds before handling each request, so every
    response head (errors included) leaves that much later: the round trip to a distant
    origin, which makes concurrent misses at a cache overlap as they would in production.
    The wait is before the handler, so nothing is opened or read while it lasts."""

    @web.middleware
    async def delay(request: web.Request, handler: Handler) -> web.StreamResponse:
        await asyncio.sleep(latency)
        return await handler(request)

    return delay


async def _server_fields(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def make_app(
    root: Path, rules: CacheRules | None = None, *, latency: float = 0.0
) -> web.Application:
    """The aiohttp application serving `root` (which must be a directory) read-only,
    each response head delayed by `latency` seconds (>= 0)."""
    check_latency(latency)
    archive = Archive(root, rules or CacheRules())
    app = web.Application(middlewares=[_delay(latency)] if latency > 0 else [])
    app[ARCHIVE_KEY] = archive
    app.router.add_route("*", "/{tail:.*}", archive.handle)
    app.on_response_prepare.append(_server_fields)
    return app


async def start(
    root: Path,
    host: str,
    port: int,
    rules: CacheRules | None = None,
    *,
    latency: float = 0.0,
    access_log: logging.Logger | None = access_logger,
    shutdown_timeout: float = 5.0,
) -> web.AppRunner:
    """Start serving `root` on host:port (0 picks a free port), each response `latency`
    seconds late; returns the runner (`runner.cleanup()` stops it). Raises OSError when
    the address cannot be bound."""
    runner = web.AppRunner(
        make_app(root, rules, latency=latency),
        access_log=access_log,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def listen_url(runner: web.AppRunner) -> str:
    """http://HOST:PORT of the first bound socket (with the real port when 0 was asked)."""
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(
    root: Path,
    host: str,
    port: int,
    rules: CacheRules | None = None,
    *,
    latency: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `root` until SIGINT or SIGTERM, each response `latency` seconds late;
    `on_ready(url)` is called once listening. Raises OSError when the address cannot be
    bound."""

    async def serve() -> None:
        runner = await start(root, host, port, rules, latency=latency)
        try:
            if on_ready is not None:
                on_ready(listen_url(runner))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())
