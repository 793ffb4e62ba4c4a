"""HTTPS from the service itself (CXR_TLS_CERT / CXR_TLS_KEY): the console script as a real process serving a
certificate from a CA made in the test; what a client of that CA sees, what old or weak clients get, the
container healthcheck over HTTPS; and the start-up errors for every half-configured or broken pair."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from app_harness import start_service_process
from tls_certs import CertificateAuthority, encrypted_key

from app import cli

REPO = Path(__file__).resolve().parents[2]
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version negotiated with the server, or raises ssl.SSLError / OSError."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return str(tls.version())


def healthcheck(port: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True, timeout=30,
                          check=False, env={"CXR_PORT": str(port), "CXR_HEALTHCHECK_TIMEOUT": "3",
                                            "PATH": "/usr/bin:/bin", **env})


@pytest.mark.slow
def test_https_process_serves_modern_tls_only(shipped_model, fullres_images, tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("cxr-serve")
    other = CertificateAuthority(tmp_path / "other-pki", name="Someone Else CA")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CXR_TLS_CERT": str(server.cert),
           "CXR_TLS_KEY": str(server.key), "CXR_AUDIT_ENABLED": "false",
           "CXR_RUNTIME": "keras"}  # the float32 reference: no runtime conversion at start, a faster test
    env.pop("CXR_MODEL_STORE", None)
    service = start_service_process(tmp_path / "server.log", env, scheme="https")
    port, url = service.port, service.url
    try:
        service.wait_for("/health/ready", verify=trusting(ca.cert))
        with httpx.Client(base_url=url, verify=trusting(ca.cert), timeout=30) as client:
            film = fullres_images[-1]
            answer = client.post("/predict", files={"file": (film.name, film.read_bytes())})
            assert answer.status_code == 200, answer.text
            assert answer.json()["prediction"] in ("NORMAL", "PNEUMONIA")
        assert handshake(port, trusting(ca.cert)) in ("TLSv1.2", "TLSv1.3")

        # a client that does not trust this CA refuses the server; plain HTTP gets no answer
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/health/ready", verify=trusting(other.cert), timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)

        # TLS 1.1 and a TLS 1.2 suite without forward secrecy are refused by the server (the client offers them)
        old = trusting(ca.cert)
        old.set_ciphers("ALL:@SECLEVEL=0")
        old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(port, old)
        static_rsa = trusting(ca.cert)
        static_rsa.maximum_version = ssl.TLSVersion.TLSv1_2
        static_rsa.set_ciphers("AES128-SHA")  # RSA key exchange (no forward secrecy), CBC with SHA-1
        with pytest.raises((ssl.SSLError, ConnectionError)):  # the server closes the handshake
            handshake(port, static_rsa)
        static_rsa.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")  # the same client with a modern suite gets in
        assert handshake(port, static_rsa) == "TLSv1.2"

        # the container healthcheck speaks HTTPS and checks it is talking to the certificate it was given
        assert healthcheck(port, CXR_TLS_CERT=str(server.cert)).returncode == 0
        wrong = healthcheck(port, CXR_TLS_CERT=str(ca.issue("impostor").cert))
        assert wrong.returncode == 1 and "does not present CXR_TLS_CERT" in wrong.stderr
        assert healthcheck(port).returncode == 1  # plain HTTP to an HTTPS port: not healthy
    finally:
        code = service.stop()
    output = service.log_text()
    assert code == 0, output[-3000:]
    assert f"HTTPS on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


# -- start-up errors: `cxr-serve` exits 2 and names the setting, the file and the problem -----------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    first, second = ca.issue("first"), ca.issue("second")
    not_pem = folder / "not-pem.crt"
    not_pem.write_text("hello\n")
    return {"cert": first.cert, "key": first.key, "other_key": second.key, "ca": ca.cert,
            "encrypted_key": encrypted_key(first.key), "not_pem": not_pem, "missing": folder / "missing.pem"}


START_UP_ERRORS = {  # case -> (settings, words the error must contain)
    "cert without key": ({"TLS_CERT": "cert"}, ["CXR_TLS_CERT is set but CXR_TLS_KEY is not"]),
    "key without cert": ({"TLS_KEY": "key"}, ["CXR_TLS_KEY is set but CXR_TLS_CERT is not"]),
    "missing cert": ({"TLS_CERT": "missing", "TLS_KEY": "key"}, ["CXR_TLS_CERT=", "missing.pem", "cannot read"]),
    "cert not PEM": ({"TLS_CERT": "not_pem", "TLS_KEY": "key"}, ["CXR_TLS_CERT=", "not a PEM file"]),
    "key of another cert": ({"TLS_CERT": "cert", "TLS_KEY": "other_key"},
                            ["CXR_TLS_KEY=", "does not match the certificate in CXR_TLS_CERT="]),
    "encrypted key": ({"TLS_CERT": "cert", "TLS_KEY": "encrypted_key"}, ["CXR_TLS_KEY=", "encrypted"]),
    "DICOM key of another cert": ({"DICOM_TLS_CERT": "cert", "DICOM_TLS_KEY": "other_key"},
                                  ["CXR_DICOM_TLS_KEY=", "does not match the certificate in CXR_DICOM_TLS_CERT="]),
    "DICOM cert without key": ({"DICOM_TLS_CERT": "cert"}, ["CXR_DICOM_TLS_CERT is set but CXR_DICOM_TLS_KEY"]),
    "DICOM CA without cert": ({"DICOM_TLS_CA": "ca"}, ["CXR_DICOM_TLS_CA needs CXR_DICOM_TLS_CERT"]),
    "DICOM CA unreadable": ({"DICOM_TLS_CERT": "cert", "DICOM_TLS_KEY": "key", "DICOM_TLS_CA": "missing"},
                            ["CXR_DICOM_TLS_CA=", "cannot read"]),
    "destination CA without TLS": ({"DICOM_DESTINATION_TLS_CA": "ca"},
                                   ["CXR_DICOM_DESTINATION_TLS_CA is set but CXR_DICOM_DESTINATION_TLS is not"]),
}


@pytest.mark.parametrize("case", list(START_UP_ERRORS))
def test_tls_misconfiguration_stops_start_up_with_a_precise_error(case, pki, monkeypatch, capsys):
    settings, words = START_UP_ERRORS[case]
    for name in [n for n in os.environ if n.startswith("CXR_")]:
        monkeypatch.delenv(name)
    for name, file in settings.items():
        monkeypatch.setenv(f"CXR_{name}", str(pki[file]))
    assert cli.main([]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cxr-serve: invalid configuration:")
    for word in words:
        assert word in error, error
    assert "Traceback" not in error
    for key in ("key", "other_key", "encrypted_key"):  # no key material
        assert pki[key].read_text().splitlines()[2] not in error


def test_a_matching_pair_and_ca_are_accepted(pki):
    from app.settings import Settings

    settings = Settings(tls_cert=pki["cert"], tls_key=pki["key"], dicom_tls_cert=pki["cert"],
                        dicom_tls_key=pki["key"], dicom_tls_ca=pki["ca"], dicom_destination_tls=True,
                        dicom_destination_tls_ca=pki["ca"])
    assert settings.tls_cert == pki["cert"] and settings.dicom_tls_ca == pki["ca"]
