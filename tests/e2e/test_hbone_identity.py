"""HBONE port 15008 of waypoints and ztunnels accepts only peers with a certificate from the mesh CA."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from waypost.ca import CertificateAuthority

from .test_walking_skeleton import MESH

pytestmark = pytest.mark.e2e


def _client_context(tmp_path: Path, ca: CertificateAuthority | None, spiffe_id: str, trust_root: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE certs carry a URI SAN only
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trust_root)
    ctx.set_alpn_protocols(["h2"])
    if ca is not None:
        cert = ca.issue(spiffe_id)
        cert_file = tmp_path / "client.pem"
        cert_file.write_text(cert.cert_chain_pem + cert.private_key_pem)
        ctx.load_cert_chain(cert_file)
    return ctx


def hbone_connect(ctx: ssl.SSLContext, address: str, authority: str) -> str:
    """Opens mTLS + HTTP/2 and sends CONNECT; returns the :status, or the failure as text."""
    raw = socket.create_connection((address, 15008), timeout=5)
    try:
        try:
            sock = ctx.wrap_socket(raw)
        except (ssl.SSLError, OSError) as exc:
            return f"handshake failed: {exc}"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "CONNECT"), (":authority", authority)])
        try:
            sock.sendall(conn.data_to_send())
            while True:
                data = sock.recv(65535)
                if not data:
                    return "closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        return dict(event.headers)[b":status"].decode()
                    if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        return f"refused: {type(event).__name__}"
                sock.sendall(conn.data_to_send())
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc}"
    finally:
        raw.close()


@pytest.fixture
def shop(start_mesh):
    return start_mesh(MESH, name="hbone")


def test_hbone_requires_a_mesh_certificate(shop, tmp_path):
    mesh_ca = CertificateAuthority.load(shop.state_dir / "ca")
    root = mesh_ca.root_cert_pem
    waypoint = shop.state["waypoints"][0]["address"]
    routed = shop.service("shop", "routed")["vip"]
    pod = shop.pods("shop", "echo")[0]["address"]
    client_id = "spiffe://cluster.local/ns/shop/sa/client"

    good = _client_context(tmp_path, mesh_ca, client_id, root)
    assert hbone_connect(good, waypoint, f"{routed}:8000") == "200"  # positive control: the check can pass
    assert hbone_connect(good, pod, f"{pod}:8080") == "200"

    foreign = _client_context(tmp_path, CertificateAuthority.generate(), client_id, root)
    none = _client_context(tmp_path, None, client_id, root)
    for target, authority in ((waypoint, f"{routed}:8000"), (pod, f"{pod}:8080")):
        for ctx in (foreign, none):
            outcome = hbone_connect(ctx, target, authority)
            assert outcome != "200" and not outcome.isdigit(), outcome


def test_waypoint_refuses_destinations_it_does_not_serve(shop, tmp_path):
    mesh_ca = CertificateAuthority.load(shop.state_dir / "ca")
    good = _client_context(tmp_path, mesh_ca, "spiffe://cluster.local/ns/shop/sa/client", mesh_ca.root_cert_pem)
    waypoint = shop.state["waypoints"][0]["address"]
    plain = shop.service("shop", "plain")["vip"]  # not bound to this waypoint
    assert hbone_connect(good, waypoint, f"{plain}:80") == "404"
