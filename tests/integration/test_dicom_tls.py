"""DICOM TLS with a real PACS: Debian's Orthanc configured for DICOM TLS only (its own certificate, the
hospital CA as trust anchor, client certificates required) and cxr-serve as a process with its node on TLS
(callers must present a certificate the hospital CA signed) and sending SRs over TLS. A film goes from Orthanc
to the node over TLS, the SR comes back over TLS into the same study. Refused: a plain association, a TLS
caller without a certificate, a certificate from another CA; and a caller that connects and never starts its
handshake does not hold up the others."""

from __future__ import annotations

import io
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from app_harness import free_port
from chest_dicom import chest_dicom
from integration_support import GATE_SETTINGS, pick_films
from peers import orthanc, start_cxr_serve
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from test_orthanc import send_to_cxr, upload, wait_for_metrics, wait_for_srs
from tls_certs import CertificateAuthority, Issued

pytestmark = pytest.mark.slow

NODE_AE, MODALITY_AE = "CXR_SERVE", "MODALITY"


def orthanc_tls(hospital: CertificateAuthority, orthanc_cert: Issued, node_port: int) -> dict[str, object]:
    """The options a hospital sets in its orthanc.json (docs/integration.md shows the same)."""
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(orthanc_cert.cert),
        "DicomTlsPrivateKey": str(orthanc_cert.key),
        "DicomTlsTrustedCertificates": str(hospital.cert),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {"cxr": {"AET": NODE_AE, "Host": "127.0.0.1", "Port": node_port, "UseDicomTls": True}},
    }


def echo(port: int, called: str, tls: tuple[ssl.SSLContext, str] | None) -> bool:
    """A C-ECHO from a pynetdicom modality: True if the association was accepted and the echo answered 0."""
    ae = AE(ae_title=MODALITY_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def client_context(trust: Path, identity: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust))
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    return context


def test_orthanc_round_trip_over_dicom_tls(shipped_model, fullres_images, patient, tmp_path):
    hospital = CertificateAuthority(tmp_path / "hospital-pki")
    node_cert, orthanc_cert, modality = hospital.issue("cxr-serve"), hospital.issue("orthanc"), hospital.issue("mod")
    stranger = CertificateAuthority(tmp_path / "other-pki", name="Another Hospital CA").issue("stranger")
    http_port, dicom_port = free_port(), free_port()
    gate_env = {f"CXR_{key.upper()}": value for key, value in GATE_SETTINGS.items()}
    (tmp_path / "orthanc").mkdir()
    with orthanc(tmp_path / "orthanc", {}, **orthanc_tls(hospital, orthanc_cert, dicom_port)) as pacs, \
            pacs.client() as rest:
        server = start_cxr_serve(tmp_path / "cxr-serve.log", http_port=http_port, dicom_port=dicom_port,
                                 CXR_DICOM_AE_TITLE=NODE_AE,
                                 CXR_DICOM_ALLOWED_CALLING_AETS=f"{pacs.ae_title},{MODALITY_AE}",
                                 CXR_DICOM_TLS_CERT=str(node_cert.cert), CXR_DICOM_TLS_KEY=str(node_cert.key),
                                 CXR_DICOM_TLS_CA=str(hospital.cert), CXR_DICOM_DESTINATION_TLS="true",
                                 CXR_DICOM_DESTINATION_TLS_CA=str(hospital.cert),
                                 CXR_DICOM_DESTINATION_HOST="127.0.0.1",
                                 CXR_DICOM_DESTINATION_PORT=str(pacs.dicom_port),
                                 CXR_DICOM_DESTINATION_AE_TITLE=pacs.ae_title, CXR_DICOM_TIMEOUT_S="10",
                                 CXR_AUDIT_ENABLED="false", CXR_RUNTIME="keras", **gate_env)
        stalled = None
        try:
            with httpx.Client(base_url=server.url, timeout=60) as api:
                assert rest.post("/modalities/cxr/echo", json={}).status_code == 200  # Orthanc's "test" button
                films = pick_films(fullres_images, lambda data: api.post(
                    "/predict", files={"file": ("film.dcm", data)}).status_code == 200)
                source_bytes = chest_dicom(films["PNEUMONIA"], patient=patient)
                stored = upload(rest, source_bytes)
                sent = send_to_cxr(rest, stored["ID"])
                assert sent.status_code == 200, sent.text
                [sr_bytes] = wait_for_srs(rest, stored["ParentStudy"])
                wait_for_metrics(api, 'cxr_dicom_sr_sent_total{outcome="sent"} 1.0')

                trust = hospital.cert
                stalled = socket.create_connection(("127.0.0.1", dicom_port))  # connects, never says a word
                # a modality with a hospital certificate gets in, while the stalled caller is still connected
                assert echo(dicom_port, NODE_AE, (client_context(trust, modality), "127.0.0.1"))
                assert not echo(dicom_port, NODE_AE, None), "a plain DICOM association must be refused"
                assert not echo(dicom_port, NODE_AE, (client_context(trust, None), "127.0.0.1")), \
                    "a TLS caller without a certificate must be refused"
                assert not echo(dicom_port, NODE_AE, (client_context(trust, stranger), "127.0.0.1")), \
                    "a certificate from another CA must be refused"
                # the SR went over TLS: Orthanc's DICOM port takes nothing else
                assert not echo(pacs.dicom_port, pacs.ae_title, None)
                metrics = api.get("/metrics").text
        finally:
            if stalled is not None:
                stalled.close()
            code = server.process.stop(60)
    source, sr = dcmread(io.BytesIO(source_bytes)), dcmread(io.BytesIO(sr_bytes))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    log = server.process.log_text()
    assert code == 0, log[-3000:]
    assert f"C-STORE in on 127.0.0.1:{dicom_port} over DICOM TLS" in log
    assert f"go to ORTHANC@127.0.0.1:{pacs.dicom_port} (C-STORE over DICOM TLS)" in log
    [refused] = [line for line in metrics.splitlines()
                 if line.startswith('cxr_dicom_images_received_total{outcome="tls_refused"}')]
    assert float(refused.split()[-1]) >= 3, refused
    refusals = [line for line in log.splitlines() if "DICOM connection from 127.0.0.1 refused" in line]
    assert len(refusals) >= 3, log[-3000:]
    assert any("certificate" in line for line in refusals), refusals
    assert "Traceback" not in log
    for secret in [*patient.secrets(), source.StudyInstanceUID, source.SOPInstanceUID]:
        assert secret not in log and secret not in metrics, secret
