"""The check `up` and `apply` share before binding Service ports on loopback as a non-root user."""

from __future__ import annotations

import os

from waypost.api import load_text
from waypost.local import blocks

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80}, {name: alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{name: http, port: 9000}]}
"""


def test_root_may_bind_any_port(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert blocks.privileged_ports_problem(load_text(MANIFEST).resources) is None


def test_a_user_is_told_which_service_ports_need_root(monkeypatch):
    # The suite runs as root here, so the user is simulated: only the effective uid is replaced.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    problem = blocks.privileged_ports_problem(load_text(MANIFEST).resources)
    start = blocks.unprivileged_port_start()
    if start > 80:
        assert problem is not None
        assert "shop/web:80" in problem and "8080" not in problem and "shop/api" not in problem
        assert "ip_unprivileged_port_start" in problem
    else:  # this kernel lets every user bind port 80
        assert problem is None
