"""RequestAuthentication at the waypoint with real tokens: catalogue C37–C41 and an attack corpus."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .test_authorization import base, outcome, policy

pytestmark = pytest.mark.e2e


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    def __init__(self, name: str, kid: str) -> None:
        self.name = name
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        as_bytes = lambda n: n.to_bytes((n.bit_length() + 7) // 8, "big")  # noqa: E731
        return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": b64(as_bytes(numbers.n)), "e": b64(as_bytes(numbers.e))}

    def token(self, sub: str = "sub-1", *, aud: str | None = None, exp: int | None = None, nbf: int | None = None, iss: str | None = None, key=None, alg: str = "RS256", extra: dict | None = None) -> str:
        now = int(time.time())
        claims = {"iss": iss or self.name, "sub": sub, "iat": now, "exp": exp if exp is not None else now + 3600, **(extra or {})}
        if aud is not None:
            claims["aud"] = aud
        if nbf is not None:
            claims["nbf"] = nbf
        header = {"alg": alg, "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        if alg == "none":
            return signing_input + "."
        signature = (key or self.key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"


ISS1 = Issuer("test-issuer-1@istio.io", "k1")
ISS2 = Issuer("test-issuer-2@istio.io", "k2")
ISS3 = Issuer("test-issuer-3@istio.io", "k3")
WRONG_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*issuers: Issuer) -> str:
    return json.dumps({"keys": [i.jwk() for i in issuers]})


def request_authentication(name: str, attach: str, rules: list[tuple[Issuer, str]]) -> str:
    lines = [f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  {attach}\n  jwtRules:"]
    for issuer, extra in rules:
        lines.append(f"  - issuer: {issuer.name}\n    jwks: '{jwks(issuer)}'{extra}")
    return "\n---\n" + "\n".join(lines) + "\n"


GATEWAY = "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    from tests.conftest import RunningMesh, waypost

    manifests = (
        base()
        + request_authentication("gateway-jwt", GATEWAY, [(ISS1, "\n    audiences: [svc-audience]\n    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]"), (ISS2, "")])
        + request_authentication("ignored-selector-jwt", "selector: {matchLabels: {app: backend}}", [(ISS3, "")])
        + policy(
            "require",
            f"{GATEWAY}\nrules:\n- from: [{{source: {{requestPrincipals: ['test-issuer-1@istio.io/sub-1', 'test-issuer-3@istio.io/sub-1']}}}}]\n- to: [{{operation: {{paths: [/healthz]}}}}]\n"
            "- from: [{source: {requestPrincipals: ['*']}}]\n  to: [{operation: {paths: ['/claims/*']}}]\n  when: [{key: 'request.auth.claims[groups]', values: [admins]}]",
        )
    )
    root = tmp_path_factory.mktemp("jwt")
    (root / "mesh.yaml").write_text(manifests)
    waypost("up", "-f", str(root / "mesh.yaml"), "--detach", "--state-dir", str(root / "state"), check=True)
    yield RunningMesh(root / "state")
    waypost("down", "--state-dir", str(root / "state"))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def test_c37_no_token_is_denied_by_authorization(mesh):
    assert outcome(mesh, "app/client", "http://svc/") == "403"


def test_c38_valid_token_of_the_allowed_principal(mesh):
    token = ISS1.token(aud="svc-audience")
    assert outcome(mesh, "app/client", "http://svc/", headers=bearer(token)) == "200"
    seen = json.loads(mesh.request("app/client", "http://svc/", headers=bearer(token)).body)["headers"]
    assert "Authorization" not in seen  # forwardOriginalToken defaults to false
    assert seen["X-Jwt-Sub"] == ["sub-1"]  # outputClaimToHeaders


def test_c39_issuer_known_only_to_a_selector_policy_is_rejected(mesh):
    assert outcome(mesh, "app/client", "http://svc/", headers=bearer(ISS3.token())) == "401"


def test_c40_valid_but_not_allowed_principal_and_expired_token(mesh):
    assert outcome(mesh, "app/client", "http://svc/", headers=bearer(ISS2.token(sub="sub-2"))) == "403"
    assert outcome(mesh, "app/client", "http://svc/", headers=bearer(ISS1.token(aud="svc-audience", exp=int(time.time()) - 3600))) == "401"


def test_c41_unauthenticated_path_rule(mesh):
    assert outcome(mesh, "app/client", "http://svc/healthz") == "200"


def test_claims_in_when_conditions(mesh):
    ok = ISS2.token(extra={"groups": ["users", "admins"]})
    assert outcome(mesh, "app/client", "http://svc/claims/x", headers=bearer(ok)) == "200"
    assert outcome(mesh, "app/client", "http://svc/claims/x", headers=bearer(ISS2.token(extra={"groups": ["users"]}))) == "403"


@pytest.mark.parametrize(
    "name, token, expected",
    [
        ("alg none", ISS1.token(aud="svc-audience", alg="none"), "401"),
        ("wrong key", ISS1.token(aud="svc-audience", key=WRONG_KEY), "401"),
        ("expired", ISS1.token(aud="svc-audience", exp=int(time.time()) - 120), "401"),
        ("not yet valid", ISS1.token(aud="svc-audience", nbf=int(time.time()) + 3600), "401"),
        ("wrong issuer", ISS1.token(aud="svc-audience", iss="someone-else"), "401"),
        # Envoy's jwt_authn (which Istio's waypoints use too) answers an audience mismatch with 403.
        ("wrong audience", ISS1.token(aud="other-audience"), "403 Audiences in Jwt are not allowed"),
        ("malformed base64", "not.a.jwt!!", "401"),
        ("valid", ISS1.token(aud="svc-audience"), "200"),
    ],
)
def test_attack_corpus(mesh, name, token, expected):
    r = mesh.request("app/client", "http://svc/", headers=bearer(token))
    got = str(r.status) if r.status != 403 or r.body == "RBAC: access denied" else f"403 {r.body}"
    assert got == expected, (name, r.body)


def test_token_in_two_places_with_one_invalid_is_rejected(mesh):
    good = ISS1.token(aud="svc-audience")
    bad = ISS1.token(aud="svc-audience", key=WRONG_KEY)
    assert outcome(mesh, "app/client", f"http://svc/?access_token={bad}", headers=bearer(good)) == "401"


class JwksServer:
    """Serves a JWKS document the test can change (key rotation) at http://ADDRESS:PORT/keys."""

    def __init__(self, document: str) -> None:
        import os
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.document = document
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = outer.document.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((f"127.251.{os.getpid() % 250 + 1}.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.uri = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}/keys"

    def close(self) -> None:
        self.server.shutdown()


def test_jwks_uri_is_fetched_refreshed_and_fails_closed(tmp_path, monkeypatch):
    from tests.conftest import RunningMesh, waypost

    rotated = Issuer(ISS1.name, "k-new")
    server = JwksServer(jwks(ISS1))
    monkeypatch.setenv("WAYPOST_JWKS_REFRESH", "1")  # inherited by the supervisor `up` starts
    ra = (
        "\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: remote, namespace: app}\n"
        f"spec:\n  {GATEWAY}\n  jwtRules:\n  - issuer: {ISS1.name}\n    jwksUri: {server.uri}\n"
        "\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: unreachable, namespace: app}\n"
        f"spec:\n  {GATEWAY}\n  jwtRules:\n  - issuer: {ISS2.name}\n    jwksUri: http://127.0.0.1:9/keys\n"
    )
    (tmp_path / "mesh.yaml").write_text(base() + ra)
    state = tmp_path / "state"
    try:
        waypost("up", "-f", str(tmp_path / "mesh.yaml"), "--detach", "--state-dir", str(state), check=True)
        mesh = RunningMesh(state)
        assert outcome(mesh, "app/client", "http://svc/", headers=bearer(ISS1.token())) == "200"  # keys fetched
        assert outcome(mesh, "app/client", "http://svc/", headers=bearer(ISS2.token())) == "401"  # fetch failed: closed
        server.document = jwks(rotated)  # rotation: the old key is withdrawn
        deadline = time.monotonic() + 15
        while outcome(mesh, "app/client", "http://svc/", headers=bearer(ISS1.token())) != "401":
            assert time.monotonic() < deadline, "the old key still works after refresh"
            time.sleep(0.3)
        assert outcome(mesh, "app/client", "http://svc/", headers=bearer(rotated.token())) == "200"
    finally:
        waypost("down", "--state-dir", str(state))
        server.close()
