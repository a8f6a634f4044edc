"""The access log's line (edge.observe.accesslog.request_line: the pipeline and the hit fast
path both write theirs with it) and its buffering. Pure: a StringIO stream, no sockets."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import pytest

from edge.observe.accesslog import FLUSH_BYTES, NAME, AccessLog, request_line

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def test_a_miss_line_names_each_field() -> None:
    line = request_line(
        "192.0.2.7", "GET", "/a?b=1", 200, "uri-miss", 1234, 12.345, 10.04, "recv>miss"
    )
    assert line == (
        '192.0.2.7 "GET /a?b=1" 200 uri-miss bytes=1234 time_ms=12.3 upstream_ms=10.0 '
        "walk=recv>miss"
    )


def test_a_line_without_upstream_says_dash_and_ends_with_how_it_ended() -> None:
    line = request_line(
        "::1", "HEAD", "/x", 200, "hit", 0, 0.04, None, "fast", request_id="ab12", end="cut"
    )
    assert line == '::1 "HEAD /x" 200 hit bytes=0 time_ms=0.0 upstream_ms=- id=ab12 walk=fast cut'


def test_the_protocol_is_a_field_of_its_own() -> None:
    line = request_line(
        "::1", "GET", "/x", 200, "hit", 5, 0.0, None, "fast", protocol="HTTP/2.0", request_id="r"
    )
    assert line == (
        '::1 "GET /x" 200 hit bytes=5 time_ms=0.0 upstream_ms=- proto=HTTP/2.0 id=r walk=fast'
    )


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(NAME)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(level)


def test_lines_outside_a_loop_are_written_at_once(access_logger: logging.Logger) -> None:
    out = io.StringIO()
    log = AccessLog(stream=out)
    log.line("one")
    assert re.fullmatch(rf"{STAMP} {NAME} INFO one\n", out.getvalue())


async def test_lines_of_one_loop_turn_are_written_together(
    access_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    log = AccessLog(stream=out)
    log.line("one")
    log.line("two")
    assert out.getvalue() == ""
    await asyncio.sleep(0)  # the loop runs what is ready: the flush
    assert [line.split(" INFO ")[1] for line in out.getvalue().splitlines()] == ["one", "two"]


async def test_a_full_buffer_is_written_without_waiting(access_logger: logging.Logger) -> None:
    out = io.StringIO()
    log = AccessLog(stream=out)
    log.line("x" * FLUSH_BYTES)
    assert out.getvalue().endswith("x\n")


def test_a_disabled_log_or_logger_writes_nothing(access_logger: logging.Logger) -> None:
    out = io.StringIO()
    AccessLog(enabled=False, stream=out).line("one")
    access_logger.setLevel(logging.WARNING)
    AccessLog(stream=out).line("two")
    assert out.getvalue() == ""
