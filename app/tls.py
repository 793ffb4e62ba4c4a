"""TLS for both transports: HTTPS options for uvicorn, and DICOM TLS contexts for the node (as the
association acceptor, and as the requestor towards the SR destination).

Modern defaults only (BCP 195, which DICOM PS3.15's "BCP 195" TLS profiles point to): TLS 1.2 or newer,
forward-secret AEAD cipher suites, unencrypted PEM files. Every problem with a certificate or key file is found
at start-up and named (which setting, which file, what is wrong), never at the first connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

if TYPE_CHECKING:
    from app.settings import Settings

OnRefused = Callable[[tuple[str, int], BaseException], None]  # (caller's address, why its handshake failed)

# ECDHE/DHE key exchange with AES-GCM or ChaCha20 (TLS 1.2); TLS 1.3 suites are always forward-secret AEAD
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the setting and the file."""


def _no_password() -> bytes:
    # without this callback OpenSSL would prompt on the terminal for an encrypted key's pass phrase
    raise TlsConfigError("encrypted")


def _readable(path: Path, setting: str, marker: str) -> None:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TlsConfigError(f"{setting}={path}: cannot read the file ({exc.strerror or exc})") from None
    if marker not in text:
        raise TlsConfigError(f"{setting}={path}: not a PEM file with a '{marker}' block")


def check_pair(cert: Path, key: Path, cert_setting: str, key_setting: str) -> None:
    """Raises TlsConfigError unless ``cert`` and ``key`` are readable PEM files and the key matches the cert."""
    _readable(cert, cert_setting, "-----BEGIN CERTIFICATE-----")
    _readable(key, key_setting, "PRIVATE KEY-----")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except TlsConfigError:
        raise TlsConfigError(f"{key_setting}={key}: the key is encrypted; give an unencrypted PEM key "
                             "(protect it with file permissions or a secret store)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"{key_setting}={key} does not match the certificate in {cert_setting}={cert}: "
                                 "give the private key the certificate was issued for") from None
        raise TlsConfigError(f"{cert_setting}={cert} / {key_setting}={key}: cannot load the certificate and "
                             f"key ({exc.reason or exc})") from None


def check_ca(ca: Path, setting: str) -> None:
    """Raises TlsConfigError unless ``ca`` holds at least one PEM certificate OpenSSL can load."""
    _readable(ca, setting, "-----BEGIN CERTIFICATE-----")
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"{setting}={ca}: cannot load the CA certificate(s) ({exc.reason or exc})") from None


def uvicorn_options(cert: Path | None, key: Path | None) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for HTTPS (empty when TLS is off). Python's server context already
    refuses anything older than TLS 1.2; uvicorn's own default cipher string ('TLSv1') is replaced."""
    if cert is None or key is None:
        return {}
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_version": ssl.PROTOCOL_TLS_SERVER,
            "ssl_ciphers": CIPHERS}


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    return context


def dicom_server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """The node's acceptor context: its certificate; with ``ca``, callers must present one that CA signed."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def dicom_client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Towards the SR destination: its certificate must chain to ``ca`` (the system trust store when unset) and
    name the destination host; the node's own certificate, when it has one, is presented as the client's."""
    context = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None))
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


class HandshakeInThreadServer(ThreadedAssociationServer):
    """pynetdicom's threaded server completes the TLS handshake in ``get_request``, i.e. in the one accepting
    thread: a caller that connects and sends nothing would stop every other association. Here the accepting
    thread only wraps the socket; each connection's own thread does the handshake, with a deadline."""

    handshake_timeout: float = 30.0
    on_tls_refused: OnRefused | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            previous = request.gettimeout()
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(previous)
            except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a reset: not a DICOM peer we take
                if self.on_tls_refused is not None:
                    self.on_tls_refused(client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def start_tls_server(ae: AE, address: tuple[str, int], context: ssl.SSLContext, evt_handlers: list[Any], *,
                     handshake_timeout: float, on_refused: OnRefused | None = None) -> HandshakeInThreadServer:
    """``ae.start_server(address, block=False, ssl_context=context, ...)`` with the handshake moved off the
    accepting thread (pynetdicom's start_server has no server-class argument; this is its non-blocking branch)."""
    server = ae.make_server(address, ssl_context=context, evt_handlers=evt_handlers,
                            server_class=HandshakeInThreadServer)
    server.handshake_timeout = handshake_timeout
    server.on_tls_refused = on_refused
    thread = threading.Thread(target=server.serve_forever, name="dicom-tls-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)  # what start_server does: AE.shutdown() and server.shutdown() expect it there
    return server


def serve_dicom(ae: AE, settings: Settings, evt_handlers: list[Any],
                on_refused: OnRefused | None = None) -> ThreadedAssociationServer:
    """The node's listener: DICOM TLS only when CXR_DICOM_TLS_CERT is set, plain DICOM otherwise."""
    s = settings
    address = (s.host, s.dicom_port)
    if s.dicom_tls_cert is None or s.dicom_tls_key is None:
        server = ae.start_server(address, block=False, evt_handlers=evt_handlers)
        assert server is not None
        return server
    context = dicom_server_context(s.dicom_tls_cert, s.dicom_tls_key, s.dicom_tls_ca)
    return start_tls_server(ae, address, context, evt_handlers, handshake_timeout=s.dicom_timeout_s,
                            on_refused=on_refused)


def destination_tls_args(settings: Settings) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for associations towards the SR destination (None: plain DICOM)."""
    s = settings
    if not s.dicom_destination_tls or s.dicom_destination_host is None:
        return None
    return dicom_client_context(s.dicom_destination_tls_ca, s.dicom_tls_cert, s.dicom_tls_key), \
        s.dicom_destination_host


def describe_refusal(exc: BaseException) -> str:
    """A short reason for the log: the TLS alert or verification failure, no peer data beyond that."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the timeout (plain DICOM or a stalled caller)"
    return f"connection failed during the TLS handshake ({type(exc).__name__})"
