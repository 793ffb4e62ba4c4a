"""Docker HEALTHCHECK: exit 0 when GET /health/ready answers 200, 1 otherwise.

Standard library only, so the runtime image needs no curl or wget. It asks the port the server was told to
use (``CXR_PORT``) on the loopback interface, whatever ``CXR_HOST`` says. With HTTPS on (``CXR_TLS_CERT``) it
speaks HTTPS and checks that the server presents exactly that certificate: the name in it is the public host
name, not 127.0.0.1, so the certificate itself is the trust anchor here rather than a CA and a host name.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys


def _pinned_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # replaced by the comparison with CXR_TLS_CERT after the handshake
    return context


def _first_certificate(path: str) -> bytes:
    with open(path, encoding="ascii") as handle:
        text = handle.read()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[: text.index(end) + len(end)])


def main() -> int:
    port = int(os.environ.get("CXR_PORT", "8000"))
    timeout = float(os.environ.get("CXR_HEALTHCHECK_TIMEOUT", "4"))
    cert = os.environ.get("CXR_TLS_CERT")
    url = f"{'https' if cert else 'http'}://127.0.0.1:{port}/health/ready"
    try:
        if cert:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=timeout, context=_pinned_context())
            connection.connect()
            presented = connection.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            if presented != _first_certificate(cert):
                print(f"not ready: {url}: the server does not present CXR_TLS_CERT", file=sys.stderr)
                return 1
        else:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", "/health/ready")
            return 0 if connection.getresponse().status == 200 else 1
        finally:
            connection.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
