"""Headless Chromium (Debian's `chromium`) loading a page through an HTTPS edge with HTTP/3
on: the page's own script reads which protocol the navigation and a subresource came over
(`PerformanceResourceTiming.nextHopProtocol`) and writes it into the DOM that `--dump-dom`
prints. Over TLS with ALPN the browser picks h2; with QUIC forced on for the origin, h3.

The edge's certificate comes from a local CA; Chromium trusts its leaf by SPKI hash
(`--ignore-certificate-errors-spki-list`), which covers QUIC as well as TLS over TCP, and
reaches the site name on loopback by `--host-resolver-rules`. Marked `system`: .ci/run's
system stage installs Debian's chromium."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.server.tls import LocalCA
from tests.support.procs import Proc, edge_cmd, free_port, start
from tests.support.tlsnodes import tls_edge

SITE = "www.edge.test"
CHROMIUM_TIMEOUT = 90

INDEX = """<!doctype html>
<html><head><title>protocol</title></head>
<body><p id="nav">none</p><p id="sub">none</p>
<script src="/app.js"></script></body></html>
"""

# Runs once the script itself has arrived, so its own resource entry is in the timeline.
APP_JS = """const nav = performance.getEntriesByType("navigation")[0];
document.getElementById("nav").textContent = "nav=" + nav.nextHopProtocol;
const sub = performance.getEntriesByType("resource").find((e) => e.name.endsWith("/app.js"));
document.getElementById("sub").textContent = "sub=" + (sub ? sub.nextHopProtocol : "missing");
"""


def spki_hash(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate, as Chromium's SPKI list
    takes it."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def site_edge(procs: list[Proc], tmp_path: Path) -> tuple[Proc, str]:
    """An origin serving the page and an HTTPS edge with --http3 in front of it; returns
    the edge and its certificate's SPKI hash."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(INDEX)
    (root / "app.js").write_text(APP_JS)
    port = free_port()
    origin = start(
        edge_cmd(
            "origin",
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
            "--rule",
            "/*=public, max-age=60",
        ),
        port,
        tmp_path / "origin.log",
        health_path="/index.html",
    )
    procs.append(origin)
    ca = LocalCA(tmp_path / "tls")
    pair = ca.issue("browser", [SITE, "localhost"], ["127.0.0.1"])
    edge = tls_edge(procs, tmp_path, origin.url, [pair], ca.cert_path, "--http3", name="browser")
    return edge, spki_hash(pair[0])


def chromium_dom(tmp_path: Path, url: str, spki: str, *extra: str) -> str:
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: install it with `apt-get install chromium`"
    argv = [
        chromium,
        "--headless=new",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--host-resolver-rules=MAP {SITE} 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={spki}",
        *extra,
        "--dump-dom",
        url,
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, stdin=subprocess.DEVNULL
    )
    # D-Bus complaints are noise in a container; the rest says why a load failed.
    errors = "\n".join(line for line in done.stderr.splitlines() if "dbus" not in line)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{errors[-2000:]}"
    return done.stdout + "\n" + errors[-2000:]


def protocols(dom: str) -> tuple[str | None, str | None]:
    nav = re.search(r'id="nav">nav=([^<]*)<', dom)
    sub = re.search(r'id="sub">sub=([^<]*)<', dom)
    return (nav.group(1) if nav else None, sub.group(1) if sub else None)


@pytest.mark.system
@pytest.mark.timeout(180)
def test_chromium_loads_the_page_over_h2(procs: list[Proc], tmp_path: Path) -> None:
    edge, spki = site_edge(procs, tmp_path)
    dom = chromium_dom(tmp_path, f"https://{SITE}:{edge.port}/index.html", spki)
    assert protocols(dom) == ("h2", "h2"), dom


@pytest.mark.system
@pytest.mark.timeout(180)
def test_chromium_loads_the_page_over_h3_with_quic_forced(
    procs: list[Proc], tmp_path: Path
) -> None:
    edge, spki = site_edge(procs, tmp_path)
    dom = chromium_dom(
        tmp_path,
        f"https://{SITE}:{edge.port}/index.html",
        spki,
        f"--origin-to-force-quic-on={SITE}:{edge.port}",
    )
    assert protocols(dom) == ("h3", "h3"), dom
