"""Encoded and unnormalized paths cannot slip past a path rule at the waypoint.

Each variant is sent raw (no client-side normalization) from a mesh client. A variant *bypasses* a rule
when the backend receives it and the path it received means the protected path once a server
normalizes it (percent-decoding, `\\` as `/`, `;params` dropped, `//` merged, dot segments resolved).
Paths stay case-sensitive, as in Istio: `/ADMIN` is a different path from `/admin`.
"""

from __future__ import annotations

import json
import posixpath
import re
import socket
from urllib.parse import unquote

import pytest

from .test_authorization import base, policy

pytestmark = pytest.mark.e2e

VARIANTS = [
    "/admin", "/admin/", "/admin/x", "/admin/x/y", "//admin", "///admin", "//admin//x", "/./admin", "/././admin",
    "/a/../admin", "/a/b/../../admin", "/x/./../admin", "/%61dmin", "/%61%64%6d%69%6e", "/adm%69n", "/admi%6E",
    "/%2561dmin", "/admin;x", "/admin;x/y", "/admin;/y", "/a;b/../admin", "/admin%2F", "/admin%2fx", "/admin%2F..",
    "/admin%2F..%2Fadmin", "/x%2F..%2Fadmin", "/%2Fadmin", "/%2e/admin", "/%2E/admin", "/%2e%2e/admin", "/x/%2e%2e/admin",
    "/x/%2E%2E/admin", "/admin/.", "/admin/./", "/admin/./x", "/admin/..", "/admin/../admin", "/admin%5Cx", "/%5Cadmin",
    "/x%5C..%5Cadmin", "/admin\\x", "/x\\..\\admin", "/admin?x=1", "/admin?/public", "/admin#frag", "/admin%23frag",
    "/admin%3Fx", "/./admin/../admin/x", "/public/../admin", "/public/%2e%2e/admin", "/public%2F..%2Fadmin",
    "/public/..%2Fadmin", "/public;/../admin", "/public/./../admin/x", "/%70ublic/../admin", "/admin%20", "/admin%09",
]


def normalized(raw: str) -> str:
    """How a lenient server could read a path: the worst case for the policy."""
    path = unquote(raw.split("?", 1)[0].split("#", 1)[0])
    path = path.replace("\\", "/")
    path = "/".join(segment.split(";", 1)[0] for segment in path.split("/"))
    path = re.sub("/+", "/", path)
    return posixpath.normpath(path) if path else "/"


def protected(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


def send_raw(mesh, path: str) -> tuple[int, str | None]:
    """(status, path the backend saw or None when the mesh answered)."""
    client = mesh.pods("app", "client")[0]["address"]
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((client, 0))
        sock.connect((mesh.service("app", "svc")["vip"], 80))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break  # don't wait for the proxy's delayed close after `Connection: close`
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    if status == 200:
        return status, json.loads(body)["path"]
    return status, None


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    from tests.conftest import RunningMesh, waypost

    out = {}
    policies = {
        "deny": policy("deny-admin", "targetRefs: [{kind: Service, group: '', name: svc}]\naction: DENY\nrules: [{to: [{operation: {paths: [/admin, /admin/*]}}]}]"),
        "allow": policy("allow-public", "targetRefs: [{kind: Service, group: '', name: svc}]\nrules: [{to: [{operation: {paths: [/public, '/public/*', '/', /a, '/x/*']}}]}]"),
    }
    for name, text in policies.items():
        root = tmp_path_factory.mktemp(f"bypass-{name}")
        (root / "mesh.yaml").write_text(base() + text)
        waypost("up", "-f", str(root / "mesh.yaml"), "--detach", "--state-dir", str(root / "state"), check=True)
        out[name] = RunningMesh(root / "state")
    yield out
    for mesh in out.values():
        waypost("down", "--state-dir", str(mesh.state_dir))


def test_the_corpus_is_large_enough():
    assert len(set(VARIANTS)) >= 50


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_no_variant_reaches_the_protected_path(meshes, mode):
    mesh = meshes[mode]
    assert send_raw(mesh, "/public")[0] in (200, 404 if mode == "deny" else 200)  # positive control
    assert send_raw(mesh, "/admin")[0] == 403
    bypasses = []
    for variant in VARIANTS:
        status, seen = send_raw(mesh, variant)
        if seen is not None and protected(normalized(seen)):
            bypasses.append((variant, status, seen))
    assert not bypasses, bypasses
