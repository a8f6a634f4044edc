"""The cold large-object scenario: its pure parts on their own (the nginx slice config,
aria2c's command line and report, ratios and the table), then a small run end to end with
real processes (marked `system`: .ci/run's system stage installs nginx and aria2).

Here the parts that open no socket and start no process;
tests/integration/test_scenario_cold_large.py has the ones with real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios import cold_large
from scenarios.cold_large import Download
from scenarios.large_files import OriginTally

ARIA2_OUTPUT = """\

12/07 15:39:57 [ERROR] CUID#8 - Download aborted. URI=http://127.0.0.1:18777/f.bin
Exception: [AbstractCommand.cc:351] errorCode=8 URI=http://127.0.0.1:18777/f.bin
  -> [HttpResponse.cc:81] errorCode=8 Invalid range header.

12/07 15:39:57 [ERROR] CUID#9 - Download aborted. URI=http://127.0.0.1:18777/f.bin
Exception: [AbstractCommand.cc:351] errorCode=8 URI=http://127.0.0.1:18777/f.bin

Download Results:
gid   |stat|avg speed  |path/URI
======+====+===========+=======================================================
3e3f40|OK  |   155MiB/s|/dev/shm/ariatest/out/got.bin

Status Legend:
(OK):download completed.
"""


# --- nginx and aria2c -------------------------------------------------------------------


def test_nginx_slice_config_is_the_documented_setup(tmp_path: Path) -> None:
    conf = cold_large.nginx_slice_config(tmp_path, 8081, 9091, 1 << 30)
    for line in (
        "worker_processes 1;",
        "slice 4m;",
        "proxy_cache slices;",
        "proxy_cache_key $uri$is_args$args$slice_range;",
        "proxy_set_header Range $slice_range;",
        "proxy_cache_valid 200 206 1h;",
        "proxy_pass http://origin;",
        "server 127.0.0.1:9091;",
        "listen 127.0.0.1:8081;",
        "keepalive 16;",
        "sendfile on;",
    ):
        assert line in conf, line
    # Room for the object twice: a GiB is 1024 MiB.
    assert "max_size=2112m" in conf
    paths = [w.rstrip(";") for line in conf.splitlines() for w in line.split() if w[:1] == "/"]
    assert paths and all(p.startswith(str(tmp_path)) for p in paths if p != "/"), paths


def test_aria2_argv_asks_for_parallel_ranges_of_one_url(tmp_path: Path) -> None:
    argv = cold_large.aria2_argv("aria2c", "http://127.0.0.1:1/o.bin", tmp_path, "d.bin", 16)
    assert argv[0] == "aria2c" and argv[-1] == "http://127.0.0.1:1/o.bin"
    assert argv[argv.index("-x") + 1] == argv[argv.index("-s") + 1] == "16"
    assert argv[argv.index("-k") + 1] == "1M"
    assert argv[argv.index("-d") + 1] == str(tmp_path)
    assert argv[argv.index("-o") + 1] == "d.bin"
    assert "--no-conf=true" in argv and "--file-allocation=none" in argv


def test_parse_aria2_reads_the_result_row_and_counts_errors() -> None:
    result = cold_large.parse_aria2(ARIA2_OUTPUT)
    assert result.status == "OK"
    assert result.avg_bytes_per_s == 155 * (1 << 20)
    assert result.path == "/dev/shm/ariatest/out/got.bin"
    assert result.errors == 2


def test_parse_aria2_reads_a_failure_and_other_units() -> None:
    text = "Download Results:\n0a1b2c|ERR |   1.5KiB/s|http://127.0.0.1:1/o.bin\n"
    result = cold_large.parse_aria2(text)
    assert (result.status, result.avg_bytes_per_s, result.errors) == ("ERR", 1536.0, 0)
    with pytest.raises(ValueError, match="no download result"):
        cold_large.parse_aria2("Exception: connection refused\n")


def test_edge_cache_size_holds_the_object_twice() -> None:
    assert cold_large.edge_cache_size(256 << 20) == "4G"
    assert cold_large.edge_cache_size(1 << 30) == "4G"
    assert cold_large.edge_cache_size(3 << 30) == "6G"


# --- ratios and the table ---------------------------------------------------------------


def downloads() -> list[Download]:
    size = 1000 * 1000 * 1000
    once = OriginTally(requests=256, bytes_sent=size, object_factor=1.0)
    return [
        Download("aria2", "edge", size, 2.0, once),
        Download("aria2", "nginx", size, 4.0, OriginTally(300, {}, 0, 2 * size, 2.0)),
        Download("curl", "nginx", size, 5.0, once),
        Download("curl", "edge", size, None, OriginTally(), error="curl exit 28"),
    ]


def test_download_rate_and_ratios() -> None:
    first, second, third, failed = downloads()
    assert first.mb_per_s == 500.0 and second.mb_per_s == 250.0 and third.mb_per_s == 200.0
    assert failed.mb_per_s is None
    # Above 1: edge faster; a failed download gives no ratio.
    assert cold_large.ratios(downloads()) == {"aria2": 2.0, "curl": None}
    assert cold_large.ratios(downloads()[:1]) == {}


def test_render_shows_each_download_and_the_ratios() -> None:
    lines = cold_large.render(downloads(), 16).splitlines()
    assert lines[0].split()[:4] == ["client", "server", "seconds", "MB/s"]
    assert lines[1].split() == ["aria2c", "-x", "16", "edge", "2.00", "500.0", "256", "1.000", "ok"]
    assert lines[2].split()[-3:] == ["300", "2.000", "ok"]
    assert lines[4].split() == ["curl", "edge", "-", "-", "0", "0.000", "curl", "exit", "28"]
    assert lines[5] == "aria2c -x 16: edge/nginx MB/s 2.000 (goal: at least 1)"
    assert lines[6] == "curl: edge/nginx MB/s n/a (goal: at least 1)"


def test_download_json_keeps_the_origin_tally() -> None:
    got = downloads()[1].as_json()
    assert got["mb_per_s"] == 250.0
    assert got["origin"]["requests"] == 300 and got["origin"]["object_factor"] == 2.0


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert cold_large.sha256_file(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_bad_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--size", "1M"], ["--clients", "wget"], ["--connections", "17"]):
        assert cold_large.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("cold_large: ") and len(err.strip().splitlines()) == 1, err


# --- a small run ------------------------------------------------------------------------
