"""broker/tls.py: building the server context and reloading it in place."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from broker.tls import Reloader, TlsFiles, server_context


def write(directory: Path, cert: trustme.LeafCert) -> TlsFiles:
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return TlsFiles(str(cert_file), str(key_file), None, verify_peer=False)


def test_tls_1_2_at_least_and_client_certificates_only_when_asked(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = write(tmp_path, ca.issue_cert("127.0.0.1"))
    context = server_context(files)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    verifying = TlsFiles(files.cert, files.key, str(tmp_path / "ca.pem"), verify_peer=True)
    assert server_context(verifying).verify_mode == ssl.CERT_REQUIRED


def test_verifying_peers_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_ca"):
        TlsFiles("cert.pem", "key.pem", None, verify_peer=True)


def test_a_bad_reload_leaves_the_context_as_it_was(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = write(tmp_path, ca.issue_cert("127.0.0.1"))
    reloader = Reloader()
    context = reloader.add(server_context(files), files)
    # Half a renewal: the new certificate is written, its key not yet.
    renewed = ca.issue_cert("127.0.0.1")
    Path(files.cert).write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
    with pytest.raises(ssl.SSLError):
        reloader.reload()
    # The context still holds a matching certificate and key: a handshake works.
    client = ssl.create_default_context()
    ca.configure_trust(client)
    server_side, client_side = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(server_side, client_side, server_side=True)
    peer = client.wrap_bio(client_side, server_side, server_hostname="127.0.0.1")
    for _ in range(10):
        for side in (peer, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
    assert peer.version() is not None and server.version() is not None
