"""app/tls.py's DICOM TLS listener on its own (fast; the Orthanc round trip is in tests/integration): the
handshake runs in each connection's thread, so a caller that connects and never speaks blocks no one, and is
dropped (and reported) once the handshake timeout passes; and towards the SR destination, the PACS's
certificate must come from the configured CA and name the destination host."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from tls_certs import CertificateAuthority

from app.tls import dicom_client_context, dicom_server_context, start_tls_server


def test_a_stalled_caller_does_not_block_the_handshake_of_others(tmp_path: Path):
    ca = CertificateAuthority(tmp_path)
    node, modality = ca.issue("node"), ca.issue("modality")
    refused: list[str] = []
    dropped = threading.Event()

    def on_refused(address: tuple[str, int], exc: BaseException) -> None:
        refused.append(type(exc).__name__)
        dropped.set()

    ae = AE(ae_title="NODE")
    ae.add_supported_context(Verification)
    server = start_tls_server(ae, ("127.0.0.1", 0), dicom_server_context(node.cert, node.key, ca.cert), [],
                              handshake_timeout=3, on_refused=on_refused)
    port = server.server_address[1]
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        time.sleep(0.2)  # the listener has accepted it before the modality calls
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.load_cert_chain(modality.cert, modality.key)
        caller = AE(ae_title="MODALITY")
        caller.add_requested_context(Verification)
        caller.acse_timeout = caller.network_timeout = caller.connection_timeout = 2  # < the handshake timeout
        assoc = caller.associate("127.0.0.1", port, ae_title="NODE", tls_args=(context, "127.0.0.1"))
        assert assoc.is_established, "the stalled caller held up the next association's handshake"
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert not refused
        assert dropped.wait(10), "the stalled caller was never dropped"
        assert refused == ["TimeoutError"]
    finally:
        stalled.close()
        ae.shutdown()


def test_the_destination_must_chain_to_its_ca_and_name_its_host(tmp_path: Path):
    """Towards the SR destination the node checks the PACS's certificate: signed by CXR_DICOM_DESTINATION_TLS_CA
    and naming CXR_DICOM_DESTINATION_HOST; the node's own certificate goes along as the client's."""
    ca = CertificateAuthority(tmp_path / "hospital")
    node, pacs = ca.issue("node"), ca.issue("pacs")
    wrong_name = ca.issue("elsewhere", hosts=("pacs.elsewhere.org",))
    foreign = CertificateAuthority(tmp_path / "other", name="Other CA").issue("foreign")

    def associates(pacs_cert: Path, pacs_key: Path) -> bool:
        pacs = AE(ae_title="PACS")
        pacs.add_supported_context(Verification)
        server = pacs.start_server(("127.0.0.1", 0), block=False,
                                   ssl_context=dicom_server_context(pacs_cert, pacs_key, ca.cert))
        try:
            sender = AE(ae_title="NODE")
            sender.add_requested_context(Verification)
            sender.acse_timeout = sender.network_timeout = sender.connection_timeout = 5
            context = dicom_client_context(ca.cert, node.cert, node.key)
            assoc = sender.associate("127.0.0.1", server.server_address[1], ae_title="PACS",
                                     tls_args=(context, "127.0.0.1"))
            established = assoc.is_established
            if established:
                assoc.release()
            return established
        finally:
            server.shutdown()

    assert associates(pacs.cert, pacs.key)
    assert not associates(wrong_name.cert, wrong_name.key), "a certificate for another host name was accepted"
    assert not associates(foreign.cert, foreign.key), "a certificate from another CA was accepted"
