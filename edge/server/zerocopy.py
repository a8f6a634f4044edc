"""Zero-copy sends: a span of a stored file written to a client's connection.

Owns how file bytes reach a transport. asyncio's own event loop has `loop.sendfile`;
uvloop, which nodes run on for its cheaper per-request cost, has none (its transports
do not expose one). There the span goes out with `os.sendfile` on a duplicate of the
socket's descriptor, after whatever the transport still buffers (the response head)
has left, waiting for writability on the duplicate as asyncio's own sendfile does on
the socket. TLS cannot take sendfile: those spans are read and written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import IO

#: Read size where a span is read and written (TLS).
READ_SIZE = 256 << 10
#: How often a wait for writability looks whether the connection was closed meanwhile.
_CLOSE_CHECK = 1.0


async def send_span(
    transport: asyncio.BaseTransport,
    file: IO[bytes],
    offset: int,
    count: int,
    write: Callable[[bytes], Awaitable[None]],
) -> None:
    """Write `count` bytes of `file` from `offset` to `transport`; `write` is the
    response's own (draining) write, for transports that cannot sendfile."""
    if count <= 0:
        return
    if transport.is_closing():
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    tls = transport.get_extra_info("sslcontext") is not None
    if isinstance(loop, asyncio.BaseEventLoop):
        await loop.sendfile(transport, file, offset, count)  # type: ignore[arg-type]
    elif tls or not hasattr(transport, "get_write_buffer_size"):
        await _read_and_write(file, offset, count, write)
    else:
        await _sendfile_dup(loop, transport, file, offset, count)  # type: ignore[arg-type]


async def _read_and_write(
    file: IO[bytes], offset: int, count: int, write: Callable[[bytes], Awaitable[None]]
) -> None:
    fd = file.fileno()
    end = offset + count
    while offset < end:
        data = os.pread(fd, min(READ_SIZE, end - offset), offset)
        if not data:
            raise EOFError("the stored body is shorter than its entry says")
        await write(data)
        offset += len(data)


async def _sendfile_dup(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.WriteTransport,
    file: IO[bytes],
    offset: int,
    count: int,
) -> None:
    # The head must leave first: wait until the transport has written all it holds.
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0.001)
    sock = transport.get_extra_info("socket")
    # A duplicate: if the transport closes its descriptor meanwhile, the number could
    # be reused by another connection; ours stays this socket's until we close it.
    fd = os.dup(sock.fileno())
    try:
        end = offset + count
        while offset < end:
            try:
                sent = os.sendfile(fd, file.fileno(), offset, end - offset)
            except BlockingIOError:
                await _writable(loop, transport, fd)
                continue
            except OSError as exc:  # EPIPE, ECONNRESET: the client is gone
                raise ConnectionResetError(str(exc)) from exc
            if sent == 0:
                raise EOFError("the stored body is shorter than its entry says")
            offset += sent
    finally:
        os.close(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _writable(
    loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport, fd: int
) -> None:
    """Until `fd` can take more bytes; ConnectionResetError once the transport closed
    (our duplicate would otherwise keep a dropped connection open)."""
    while True:
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        ready = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready, _CLOSE_CHECK)
                return
        finally:
            loop.remove_writer(fd)
