"""TLS for a node: the server context (certificates chosen by SNI, TLS 1.2 and 1.3
only, modern ciphers), the client context for https upstreams, and a small local CA
that `edge up --tls` uses to put the whole CDN on HTTPS.

Owns certificate loading and checking (one-line ConfigErrors), and the TLS port's
listener (`TLSListener`), which tells a TLS client from a plain-HTTP one by its first
byte; edge.server.node owns what is served on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.config import ConfigError, NodeConfig, parse_listen
from edge.features.guard import Refusal, check_authority

log = logging.getLogger("edge.server.tls")

#: TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only, no CBC, no RSA key exchange.
#: TLS 1.3 suites are all AEAD; OpenSSL's defaults stand.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class Certificate:
    cert: str
    key: str
    names: tuple[str, ...]  # DNS names of its SubjectAltName (wildcards as "*.x")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _names(cert_path: str) -> tuple[str, ...]:
    data = _read(cert_path, "TLS certificate")  # outside: a ConfigError is a ValueError
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {cert_path}") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))


def _context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    # RFC 7301: HTTP/2 first (edge.server.http2 takes the connection), then HTTP/1.1.
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS key {key} does not match certificate {cert} (or is not PEM): {exc.reason}"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from exc
    return ctx


def matches(name: str, pattern: str) -> bool:
    """RFC 6125 Section 6.4.3: a wildcard stands for exactly one left-most label."""
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern


def server_context(certs: Sequence[str], keys: Sequence[str]) -> ssl.SSLContext:
    """The listening context: the first pair is the default; with several, the one
    whose SubjectAltName matches the client's SNI (exact names before wildcards)."""
    if len(certs) != len(keys):
        raise ConfigError(
            f"--tls-cert and --tls-key come in pairs: {len(certs)} certificate(s), "
            f"{len(keys)} key(s)"
        )
    if not certs:
        raise ConfigError("TLS needs a certificate and its key (--tls-cert, --tls-key)")
    loaded = []
    for cert, key in zip(certs, keys, strict=True):
        _read(key, "TLS key")  # a missing or unreadable key is named as such
        loaded.append((Certificate(cert, key, _names(cert)), _context(cert, key)))
    default = loaded[0][1]
    if len(loaded) > 1:
        exact: dict[str, ssl.SSLContext] = {}
        for c, ctx in loaded:
            for n in c.names:
                if not n.startswith("*."):
                    exact.setdefault(n, ctx)  # a name in two certificates: the earlier one
        wild = [(n, ctx) for c, ctx in loaded for n in c.names if n.startswith("*.")]

        def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            if not server_name:
                return
            name = server_name.lower().rstrip(".")
            chosen = exact.get(name) or next((c for p, c in wild if matches(name, p)), None)
            if chosen is not None:
                sock.context = chosen

        default.sni_callback = pick
    return default


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """For https upstreams: verified against `ca_file` (e.g. edge up's local CA) or
    the system's trust store."""
    if ca_file:
        _read(ca_file, "upstream CA file")
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except ssl.SSLError as exc:
        raise ConfigError(f"upstream CA file is not PEM: {ca_file}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read upstream CA file {ca_file}: {exc.strerror}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check(cfg: NodeConfig) -> ssl.SSLContext | None:
    """Every TLS setting of a node, checked as a whole (each mistake one ConfigError
    line): certificates and keys in pairs, readable, each key its certificate's; hsts
    a whole number >= 0; http_redirect a listen address apart from the node's own;
    upstream_ca a readable PEM bundle. Returns the server context (None: plain HTTP).
    The CLI calls it before starting a node, and the node again as it starts."""
    certs, keys = tuple(cfg.tls_cert), tuple(cfg.tls_key)
    if len(certs) != len(keys):
        raise ConfigError(
            f"--tls-cert and --tls-key come in pairs: {len(certs)} certificate(s), "
            f"{len(keys)} key(s)"
        )
    hsts = cfg.hsts
    if isinstance(hsts, bool) or not isinstance(hsts, int) or hsts < 0:
        raise ConfigError(f"hsts must be a whole number of seconds >= 0: {hsts!r}")
    if hsts and not certs:
        raise ConfigError("hsts needs TLS (--tls-cert and --tls-key)")
    if cfg.http_redirect:
        if not certs:
            raise ConfigError("http_redirect needs TLS (--tls-cert and --tls-key)")
        if parse_listen(cfg.http_redirect) == parse_listen(cfg.listen, any_port=True):
            raise ConfigError(f"http_redirect must not be the TLS listener ({cfg.listen})")
    if cfg.upstream_ca:
        client_context(cfg.upstream_ca)
    return server_context(certs, keys) if certs else None


def https_location(host: str, target: str, port: int) -> str | None:
    """The https URL of a plain-HTTP request for `host` (its Host field) and `target`
    (origin-form path and query), on `port` unless it is 443; None when either is
    not fit to be put in a Location (the Host as edge.features.guard.check_authority says)."""
    authority = check_authority(host)
    if isinstance(authority, Refusal) or not target.startswith("/"):
        return None
    # The port goes (a colon after any IPv6 literal's "]"): the TLS port replaces it.
    has_port = authority.rfind(":") > authority.rfind("]")
    name = authority.rsplit(":", 1)[0] if has_port else authority
    return f"https://{name if port == 443 else f'{name}:{port}'}{target}"


# -- the TLS port -----------------------------------------------------------------------

#: RFC 8446 Section 5.1 (and TLS 1.2's RFC 5246 Section 6.2.1): a client's first record
#: is a handshake, content type 22. No HTTP request begins with this byte.
_HANDSHAKE = 0x16
#: nginx's words for the same mistake.
PLAIN_ON_TLS = "The plain HTTP request was sent to HTTPS port"


class TLSListener:
    """The TLS port. Each accepted connection's first byte is peeked at (not read)
    before anything else: a TLS handshake goes on as TLS to `factory`, the node's
    HTTP handler (asyncio's connect_accepted_socket, the handshake with the bytes
    still in the socket); anything else is plain HTTP, answered with a 400 in plain
    HTTP/1.1 that says so, as nginx does, rather than a handshake failure a person
    with curl cannot read. A connection that sends nothing is closed after
    `idle_timeout` seconds, as on a plain port."""

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        *,
        idle_timeout: float,
        handshake_timeout: float,
        server_header: str,
        refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        self.factory = factory
        self.context = context
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.server_header = server_header
        self.refused = refused
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server(
            (host, port), family=family, backlog=1024, reuse_port=reuse_port
        )
        self._sock.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(self._sock))
        return int(self._sock.getsockname()[1])

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._sock is not None:
            self._sock.close()
        for conn in list(self._waiting):
            self._drop(conn)
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, say: try again shortly
                log.warning("accepting a TLS connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            self._waiting[conn] = loop.call_later(self.idle_timeout, self._drop, conn)
            loop.add_reader(conn.fileno(), self._first_byte, conn)

    def _drop(self, conn: socket.socket) -> None:
        self._stop_waiting(conn)
        conn.close()

    def _stop_waiting(self, conn: socket.socket) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())

    def _first_byte(self, conn: socket.socket) -> None:
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        self._stop_waiting(conn)
        if not first:
            conn.close()
        elif first[0] == _HANDSHAKE:
            task = asyncio.get_running_loop().create_task(self._tls(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._plain(conn)

    async def _tls(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self.factory,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            conn.close()

    def _plain(self, conn: socket.socket) -> None:
        """400 in plain HTTP/1.1, then close once the client has had it: what it
        sent is read first, so the close does not reset the answer away."""
        with contextlib.suppress(OSError):
            conn.recv(65536)
        body = f"400 Bad Request: {PLAIN_ON_TLS}\n".encode()
        head = (
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            f"Server: {self.server_header}\r\n\r\n"
        )
        self.refused(400)
        try:
            conn.send(head.encode() + body)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        # Read on until the client closes (or a second passes), then close.
        loop = asyncio.get_running_loop()
        self._waiting[conn] = loop.call_later(1.0, self._drop, conn)
        loop.add_reader(conn.fileno(), self._drain, conn)

    def _drain(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)


# -- a local CA -----------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalCA:
    """A CA kept in a directory (ca.pem, ca-key.pem private to the user), created once
    and reused, that issues server certificates for names and addresses."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.cert_path = self.directory / "ca.pem"
        self.key_path = self.directory / "ca-key.pem"
        if not (self.cert_path.is_file() and self.key_path.is_file()):
            self._create()
        self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.key = key

    def _create(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge local CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.key_path, _key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, dns_names: Sequence[str], addresses: Sequence[str]
    ) -> tuple[Path, Path]:
        """A server certificate and key for `dns_names` and IP `addresses`, written as
        NAME.pem and NAME-key.pem beside the CA; returns their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
        alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}-key.pem"
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path
