"""The examples in examples/ start and behave as their READMEs say."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def hostname(text: str) -> str:
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Hostname="))


def test_routing_example(start_mesh):
    mesh = start_mesh(REPO / "examples" / "routing", name="routing")
    assert hostname(mesh.request("shop/client", "http://reviews/", headers=[("x-tester", "true")]).body).startswith("reviews-v2-")
    redirect = mesh.request("shop/client", "http://reviews/old/page")
    assert (redirect.status, dict(redirect.headers)["location"]) == (301, "http://reviews/new/page")
    assert "URL=/items" in mesh.request("shop/client", "http://reviews/api/v1/items").body.splitlines()
    assert hostname(mesh.request("mobile/app", "http://reviews.shop/").body).startswith("reviews-v2-")
    canary = mesh.request("shop/client", "http://reviews/")
    assert dict(canary.headers)["x-served-by"] == "waypost"
    from waypost.local.client import send_grpc

    reply = send_grpc(mesh.state, "shop/client", "reviews:7070", metadata=[("x-version", "v2")])
    assert hostname(reply.message).startswith("reviews-v2-")


def test_extauthz_example(start_mesh):
    # Istio's sample authorizer runs as a mesh workload (built in for its image); the waypoint reaches it over HBONE.
    mesh = start_mesh(REPO / "examples" / "extauthz", name="extauthz")
    assert mesh.request("foo/curl", "http://httpbin:8000/ip").status == 200
    denied = mesh.request("foo/curl", "http://httpbin:8000/headers", headers=[("x-ext-authz", "deny")])
    assert denied.status == 403 and "denied by ext_authz" in denied.body
    allowed = mesh.request("foo/curl", "http://httpbin:8000/headers", headers=[("x-ext-authz", "allow")])
    assert allowed.status == 200 and "X-Ext-Authz-Check-Result" in allowed.body
    decisions = [line for line in (mesh.state_dir / "logs" / "workloads.log").read_text().splitlines() if "foo/ext-authz" in line]
    assert [line.split()[1] for line in decisions] == ["[HTTP][denied]", "[HTTP][allowed]"]


def test_classic_example(start_mesh):
    mesh = start_mesh(REPO / "examples" / "classic", name="classic")
    plain = mesh.request("books/client", "http://reviews:9080/")
    assert dict(plain.headers)["x-reviews-route"] == "default"
    assert json.loads(plain.body)["pod"].startswith("reviews-v1-")
    jason = {json.loads(mesh.request("books/client", "http://reviews:9080/", headers=[("end-user", "jason")]).body)["pod"] for _ in range(6)}
    assert len(jason) == 1 and jason.pop().startswith("reviews-v2-")  # the subset's consistent hash: one pod
