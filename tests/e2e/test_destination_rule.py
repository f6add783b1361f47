"""DestinationRule in a waypoint (issue 10; catalogue rows C42–C45), with real Envoy and real traffic.

Local "external" servers stand in for the applications whose behaviour the rule changes: one that fails,
one that speaks TLS only, one that expects a PROXY protocol header. They are ServiceEntry endpoints bound
to the namespace's waypoint, as in Istio's egress-waypoint tests.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socketserver
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.servers import Failing, serving
from tests.manifests import ambient_with_waypoint, service_entry

pytestmark = pytest.mark.e2e

BASE = f"127.254.{os.getpid() % 250 + 1}"
GOOD, BAD, TLS, PROXY, MTLS = f"{BASE}.1", f"{BASE}.2", f"{BASE}.3", f"{BASE}.4", f"{BASE}.5"


MESH = (
    ambient_with_waypoint("dr")
    + service_entry("dr", "flaky", ["flaky.example.com"], 80, target_port=8081, endpoints=(GOOD, BAD), waypoint="waypoint")
    + service_entry("dr", "retried", ["retried.example.com"], 80, target_port=8082, endpoints=(GOOD, BAD), waypoint="waypoint")
    + service_entry("dr", "secure", ["secure.example.com"], 443, target_port=8443, endpoints=(TLS,), waypoint="waypoint")
    + service_entry("dr", "proxied", ["proxied.example.com"], 80, target_port=8083, endpoints=(PROXY,), waypoint="waypoint")
    + service_entry("dr", "mutual", ["mutual.example.com"], 443, target_port=8444, endpoints=(MTLS,), waypoint="waypoint")
    + """
---
apiVersion: v1
kind: Service
metadata: {name: hashed, namespace: dr}
spec: {selector: {app: hashed}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hashed, namespace: dr}
spec:
  replicas: 2
  selector: {matchLabels: {app: hashed}}
  template: {metadata: {labels: {app: hashed}}, spec: {containers: [{name: c, image: waypost/echo, ports: [{containerPort: 8080}]}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: retried, namespace: dr}
spec:
  hosts: [retried.example.com]
  http: [{retries: {attempts: 3, retryOn: "5xx"}, route: [{destination: {host: retried.example.com}}]}]
"""
)


class ProxyProtocolHandler(socketserver.StreamRequestHandler):
    """An HTTP/1.1 server behind a load balancer: a PROXY v1 line must come first."""

    def handle(self) -> None:
        while True:
            first = self.rfile.readline()
            if not first:
                return
            proxy = ""
            if first.startswith(b"PROXY "):
                proxy = first.decode().strip()
                first = self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            status, body = (200, json.dumps({"proxy": proxy})) if proxy or getattr(self, "_seen_proxy", False) else (400, "no PROXY header")
            self._seen_proxy = bool(proxy) or getattr(self, "_seen_proxy", False)
            self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())


def _certificates(directory: Path) -> tuple[Path, Path, Path, Path]:
    """A CA and a server certificate for secure.example.com signed by it; an unrelated CA; and a client
    certificate of the CA (client.pem, client-key.pem: `waypost-waypoint`)."""

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool, san: str | None = None):
        builder = (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    files = {
        "ca.pem": pem(cert("test ca", ca_key, "test ca", ca_key, True)),
        "other-ca.pem": pem(cert("other ca", other_key, "other ca", other_key, True)),
        "server.pem": pem(cert("secure.example.com", server_key, "test ca", ca_key, False, "secure.example.com")),
        "server-key.pem": server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "client.pem": pem(cert("waypost-waypoint", client_key, "test ca", ca_key, False)),
        "client-key.pem": client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }
    for file, data in files.items():
        (directory / file).write_bytes(data)
    return tuple(directory / f for f in ("ca.pem", "other-ca.pem", "server.pem", "server-key.pem"))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    ca, other_ca, server_cert, server_key = _certificates(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    proxied = socketserver.ThreadingTCPServer((PROXY, 8083), ProxyProtocolHandler)
    proxied.daemon_threads = True
    threading.Thread(target=proxied.serve_forever, daemon=True).start()
    with contextlib.ExitStack() as stack:
        for port in (8081, 8082):
            stack.enter_context(serving(GOOD, port))
            stack.enter_context(serving(BAD, port, Failing))
        stack.enter_context(serving(TLS, 8443, tls=context))
        mutual = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the same certificate, and clients must have one
        mutual.load_cert_chain(server_cert, server_key)
        mutual.load_verify_locations(ca)
        mutual.verify_mode = ssl.CERT_REQUIRED
        stack.enter_context(serving(MTLS, 8444, tls=mutual))
        yield {"ca": ca, "other_ca": other_ca, "client": directory / "client.pem", "client_key": directory / "client-key.pem"}
    proxied.shutdown()


@pytest.fixture(scope="module")
def mesh(start_mesh_module, servers):
    return start_mesh_module(MESH, name="dr")


def _apply(mesh, tmp_path: Path, text: str) -> None:
    file = tmp_path / f"dr-{time.monotonic_ns()}.yaml"
    file.write_text(text)
    mesh.cli("apply", "-f", str(file))


def _rule(host: str, policy: str, name: str | None = None) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name or host.split('.')[0]}, namespace: dr}}
spec:
  host: {host}
  trafficPolicy: {policy}
"""


def test_outlier_detection_ejects_the_failing_endpoint(mesh, tmp_path):
    # Without a rule, requests alternate between the two endpoints: half of them fail (500 is not retried).
    before = [mesh.request("dr/client", "http://flaky.example.com/").status for _ in range(20)]
    assert before.count(500) >= 5, before
    # maxEjectionPercent: Envoy's default (10 %) would never eject one of two endpoints (ejections_overflow).
    _apply(mesh, tmp_path, _rule("flaky.example.com", "{outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}"))
    after = [mesh.request("dr/client", "http://flaky.example.com/").status for _ in range(30)]
    # The first 500 ejects the bad endpoint for a minute: at most that one request fails.
    assert after.count(500) <= 1, after
    assert after[-10:] == [200] * 10


def test_virtual_service_retries_hide_a_failing_endpoint(mesh, tmp_path):
    statuses = [mesh.request("dr/client", "http://retried.example.com/").status for _ in range(20)]
    assert statuses == [200] * 20
    # C45: ISTIO_MUTUAL is what the mesh does anyway (HBONE); the rule changes nothing for the request.
    _apply(mesh, tmp_path, _rule("retried.example.com", "{tls: {mode: ISTIO_MUTUAL}}"))
    assert [mesh.request("dr/client", "http://retried.example.com/").status for _ in range(5)] == [200] * 5


def test_tls_origination_simple_verifies_the_server(mesh, servers, tmp_path):
    """C42: the client speaks plain HTTP; the waypoint originates TLS (SIMPLE) to a TLS-only server."""
    # No rule: the waypoint speaks plain HTTP to a TLS server, which cannot answer it.
    assert mesh.request("dr/client", "http://secure.example.com:443/").status in (502, 503)
    policy = f"{{portLevelSettings: [{{port: {{number: 443}}, tls: {{mode: SIMPLE, caCertificates: {servers['ca']}, sni: secure.example.com}}}}]}}"
    _apply(mesh, tmp_path, _rule("secure.example.com", policy))
    r = mesh.request("dr/client", "http://secure.example.com:443/hello")
    assert r.status == 200, r.body
    seen = json.loads(r.body)
    assert (seen["server"], seen["path"], seen["tls"]) == (TLS, "/hello", True)
    # A CA that did not sign the server's certificate: the handshake fails, nothing is sent (fail closed).
    policy = f"{{tls: {{mode: SIMPLE, caCertificates: {servers['other_ca']}, sni: secure.example.com}}}}"
    _apply(mesh, tmp_path, _rule("secure.example.com", policy))
    assert mesh.request("dr/client", "http://secure.example.com:443/hello").status == 503


def test_tls_origination_mutual_presents_the_client_certificate(mesh, servers, tmp_path):
    """DestinationRule tls MUTUAL: the waypoint presents the given certificate to a server that requires one."""
    simple = f"{{tls: {{mode: SIMPLE, caCertificates: {servers['ca']}, sni: secure.example.com}}}}"
    _apply(mesh, tmp_path, _rule("mutual.example.com", simple))
    assert mesh.request("dr/client", "http://mutual.example.com:443/").status == 503  # no client certificate: refused
    mutual = (f"{{tls: {{mode: MUTUAL, caCertificates: {servers['ca']}, clientCertificate: {servers['client']}, "
              f"privateKey: {servers['client_key']}, sni: secure.example.com}}}}")
    _apply(mesh, tmp_path, _rule("mutual.example.com", mutual))
    r = mesh.request("dr/client", "http://mutual.example.com:443/who")
    assert r.status == 200, r.body
    seen = json.loads(r.body)
    assert (seen["server"], seen["tls"], seen["client"]) == (MTLS, True, "waypost-waypoint")


def test_proxy_protocol_header_is_sent_upstream(mesh, tmp_path):
    """C44: with proxyProtocol V1 the server first reads a PROXY line, then the request."""
    assert mesh.request("dr/client", "http://proxied.example.com/").status == 400
    _apply(mesh, tmp_path, _rule("proxied.example.com", "{proxyProtocol: {version: V1}}"))
    r = mesh.request("dr/client", "http://proxied.example.com/")
    assert r.status == 200, r.body
    assert json.loads(r.body)["proxy"].startswith("PROXY TCP4 ")


def test_consistent_hash_and_h2_upgrade(mesh, tmp_path):
    """C43 (h2UpgradePolicy UPGRADE: the app sees HTTP/2) and consistentHash on a header."""
    first = json.loads(mesh.request("dr/client", "http://hashed.dr/").body)
    assert first["proto"] == "HTTP/1.1"
    _apply(mesh, tmp_path, _rule("hashed", "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}, connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}"))
    pods_by_user: dict[str, set[str]] = {}
    for user in (f"user-{i}" for i in range(12)):
        for _ in range(4):
            seen = json.loads(mesh.request("dr/client", "http://hashed.dr/", headers=[("x-user", user)]).body)
            assert seen["proto"] == "HTTP/2.0"
            pods_by_user.setdefault(user, set()).add(seen["pod"])
    assert all(len(pods) == 1 for pods in pods_by_user.values()), pods_by_user  # one user, one pod
    assert len(set().union(*pods_by_user.values())) == 2  # and users are spread over both pods
