"""The examples in examples/ start and behave as their READMEs say."""

from __future__ import annotations

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
