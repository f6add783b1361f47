"""Workload certificates (issue 9): short-lived certificates rotate before expiry under load with no failed
request, and at every HBONE listener (waypoint and pod ztunnel) a certificate from another trust domain, an
expired one, or none at all is refused."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import REPO
from waypost.ca import CertificateAuthority

pytestmark = pytest.mark.e2e

TTL = 4  # seconds: renewed at half-life, so several renewals happen during the load below


def serials(admin: str) -> set[str]:
    import json

    certs = json.loads(urllib.request.urlopen(f"http://{admin}/certs", timeout=5).read())
    return {c["serial_number"] for entry in certs.get("certificates", []) for c in entry.get("cert_chain", [])}


def test_certificates_rotate_under_load_without_failures(start_mesh, monkeypatch):
    monkeypatch.setenv("WAYPOST_CERT_TTL", str(TTL))  # the supervisor inherits it
    mesh = start_mesh(REPO / "examples" / "quickstart", name="rotation")
    waypoint = next(p for p in mesh.state["proxies"] if p["kind"] == "waypoint")
    first = serials(waypoint["admin"])
    failures: list[str] = []
    done = {"n": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                r = mesh.request("quickstart/client", "http://echo/", timeout=5)
                if r.status != 200:
                    failures.append(str(r.status))
                done["n"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                failures.append(repr(exc))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(3 * TTL)  # past the first certificates' expiry: only renewed ones can still work
    finally:
        stop.set()
        worker.join(10)
    assert not failures, failures[:5]
    assert done["n"] > 50
    assert first and not (first & serials(waypoint["admin"])), "the waypoint still serves its first certificate"
    assert mesh.request("quickstart/client", "http://echo/").status == 200


def handshake(address: str, port: int, cert: tuple[str, str] | None, tmp_path) -> str:
    """Tries an mTLS (h2) handshake the way a ztunnel dials HBONE; 'accepted' or why it failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we test the server's check of *our* certificate
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        (tmp_path / "c.pem").write_text(cert[0])
        (tmp_path / "k.pem").write_text(cert[1])
        context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    import socket

    with socket.create_connection((address, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                # TLS 1.3: a refused client certificate shows up on the first read, not in the handshake.
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                tls.settimeout(3)
                data = tls.recv(1)
                return "accepted" if data else "closed"
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc.__class__.__name__}"


def test_foreign_expired_and_missing_certificates_are_refused_at_every_hbone_hop(start_mesh, tmp_path):
    mesh = start_mesh(REPO / "examples" / "quickstart", name="badcerts")
    waypoint = next(p for p in mesh.state["proxies"] if p["kind"] == "waypoint")["address"]
    pod = mesh.pods("quickstart", "echo-v1")[0]["address"]
    from waypost.local.state import StateDir

    mesh_ca = CertificateAuthority.load(StateDir(mesh.state_dir).certs)
    good = mesh_ca.issue("spiffe://cluster.local/ns/quickstart/sa/client")
    expired = mesh_ca.issue("spiffe://cluster.local/ns/quickstart/sa/client", ttl=timedelta(minutes=1),
                            now=datetime.now(timezone.utc) - timedelta(hours=1))
    foreign = CertificateAuthority.generate("evil.example").issue("spiffe://evil.example/ns/quickstart/sa/client")
    for address in (waypoint, pod):
        assert handshake(address, 15008, (good.cert_chain_pem, good.private_key_pem), tmp_path) == "accepted", address
        for name, cert in (("foreign trust domain", foreign), ("expired", expired)):
            outcome = handshake(address, 15008, (cert.cert_chain_pem, cert.private_key_pem), tmp_path)
            assert outcome != "accepted", f"{address}: a certificate of a {name} was accepted"
        assert handshake(address, 15008, None, tmp_path) != "accepted", f"{address}: no client certificate was accepted"
