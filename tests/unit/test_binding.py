"""Waypoint binding, table-driven from shared/spec/istio-ambient-semantics.md §1.4 and §2.1–§2.5."""

from __future__ import annotations

import pytest

from waypost.api import load_text
from waypost.mesh import AddressPlan, build


def gateway(name: str, ns: str = "app", waypoint_for: str | None = None, allowed: str | None = None, cls: str = "istio-waypoint") -> str:
    labels = f"labels: {{istio.io/waypoint-for: {waypoint_for}}}" if waypoint_for else ""
    allowed_routes = f", allowedRoutes: {{namespaces: {{from: {allowed}}}}}" if allowed else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}, {labels}}}
spec:
  gatewayClassName: {cls}
  listeners: [{{name: mesh, port: 15008, protocol: HBONE{allowed_routes}}}]
"""


def namespace(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f"{k}: {v}" for k, v in {"istio.io/dataplane-mode": "ambient", **labels}.items())
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{inner}}}}}\n"


def service(labels: dict[str, str], ns: str = "app") -> str:
    inner = ", ".join(f"{k}: {v}" for k, v in labels.items())
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: {ns}, labels: {{{inner}}}}}
spec:
  selector: {{app: x}}
  ports: [{{name: http, port: 80}}]
"""


def pod(labels: dict[str, str], ns: str = "app") -> str:
    inner = ", ".join(f"{k}: {v}" for k, v in {"app": "x", **labels}.items())
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: pod, namespace: {ns}, labels: {{{inner}}}}}
spec:
  containers: [{{name: c, image: waypost/echo, ports: [{{containerPort: 80}}]}}]
"""


def mesh(*docs: str):
    result = load_text("\n---\n".join(docs), "test.yaml")
    assert not result.errors, [d.render() for d in result.errors]
    return build(result.resources, AddressPlan(99))


def bound(snapshot, kind: str):
    if kind == "service":
        s = snapshot.service("app/svc")
        return str(s.waypoint) if s.waypoint else None
    w = snapshot.workload("app/pod")
    return str(w.waypoint) if w.waypoint else None


def reason(snapshot, kind: str = "Service", name: str = "svc"):
    status = snapshot.status_of(kind, "app", name)
    return status.conditions[0].reason if status else None


SERVICE_CASES = [
    # (id, namespace labels, service labels, gateways, expected binding, expected WaypointBound reason)
    ("namespace label binds service", {"istio.io/use-waypoint": "wp"}, {}, [gateway("wp")], "app/wp", "WaypointAccepted"),
    ("service label binds", {}, {"istio.io/use-waypoint": "wp"}, [gateway("wp")], "app/wp", "WaypointAccepted"),
    ("service label beats namespace label", {"istio.io/use-waypoint": "a"}, {"istio.io/use-waypoint": "b"}, [gateway("a"), gateway("b")], "app/b", "WaypointAccepted"),
    ("service none opts out of namespace waypoint", {"istio.io/use-waypoint": "wp"}, {"istio.io/use-waypoint": "none"}, [gateway("wp")], None, None),
    ("no label, no waypoint", {}, {}, [gateway("wp")], None, None),
    ("missing waypoint is not ready", {}, {"istio.io/use-waypoint": "nope"}, [], None, "WaypointIsNotReady"),
    ("missing named waypoint does not fall back to namespace one", {"istio.io/use-waypoint": "wp"}, {"istio.io/use-waypoint": "nope"}, [gateway("wp")], None, "WaypointIsNotReady"),
    ("gateway of another class is not a waypoint", {}, {"istio.io/use-waypoint": "ingress"}, [gateway("ingress", cls="istio")], None, "WaypointIsNotReady"),
    ("workload-only waypoint rejects service traffic", {}, {"istio.io/use-waypoint": "wp"}, [gateway("wp", waypoint_for="workload")], None, "UnsupportedTrafficType"),
    ("waypoint-for all accepts services", {}, {"istio.io/use-waypoint": "wp"}, [gateway("wp", waypoint_for="all")], "app/wp", "WaypointAccepted"),
    ("waypoint-for none rejects services", {}, {"istio.io/use-waypoint": "wp"}, [gateway("wp", waypoint_for="none")], None, "UnsupportedTrafficType"),
    ("cross-namespace waypoint needs allowedRoutes", {}, {"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "infra"}, [gateway("wp", ns="infra")], None, "AttachmentDenied"),
    ("cross-namespace waypoint with allowedRoutes All", {}, {"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "infra"}, [gateway("wp", ns="infra", allowed="All")], "infra/wp", "WaypointAccepted"),
    ("use-waypoint-namespace comes from the object that names the waypoint", {"istio.io/use-waypoint-namespace": "infra"}, {"istio.io/use-waypoint": "wp"}, [gateway("wp"), gateway("wp", ns="infra", allowed="All")], "app/wp", "WaypointAccepted"),
]


@pytest.mark.parametrize("case", SERVICE_CASES, ids=[c[0] for c in SERVICE_CASES])
def test_service_binding(case):
    _, ns_labels, svc_labels, gateways, expected, expected_reason = case
    snapshot = mesh(namespace("app", ns_labels), namespace("infra", {}), service(svc_labels), *gateways)
    assert bound(snapshot, "service") == expected
    assert reason(snapshot) == expected_reason


POD_CASES = [
    ("namespace service waypoint does not bind pods", {"istio.io/use-waypoint": "wp"}, {}, [gateway("wp")], None),
    ("pod label with workload waypoint binds", {}, {"istio.io/use-waypoint": "wp"}, [gateway("wp", waypoint_for="workload")], "app/wp"),
    ("namespace all-waypoint binds pods too", {"istio.io/use-waypoint": "wp"}, {}, [gateway("wp", waypoint_for="all")], "app/wp"),
    ("pod label with service-only waypoint does not bind", {}, {"istio.io/use-waypoint": "wp"}, [gateway("wp")], None),
    ("pod none opts out", {"istio.io/use-waypoint": "wp"}, {"istio.io/use-waypoint": "none"}, [gateway("wp", waypoint_for="all")], None),
    ("pod opted out of ambient gets no waypoint", {}, {"istio.io/use-waypoint": "wp", "istio.io/dataplane-mode": "none"}, [gateway("wp", waypoint_for="workload")], None),
]


@pytest.mark.parametrize("case", POD_CASES, ids=[c[0] for c in POD_CASES])
def test_pod_binding(case):
    _, ns_labels, pod_labels, gateways, expected = case
    snapshot = mesh(namespace("app", ns_labels), pod(pod_labels), *gateways)
    assert bound(snapshot, "pod") == expected


def test_service_and_pod_bindings_are_independent():
    snapshot = mesh(
        namespace("app", {}),
        service({"istio.io/use-waypoint": "svc-wp"}),
        pod({"istio.io/use-waypoint": "pod-wp"}),
        gateway("svc-wp"),
        gateway("pod-wp", waypoint_for="workload"),
    )
    assert bound(snapshot, "service") == "app/svc-wp"
    assert bound(snapshot, "pod") == "app/pod-wp"


def test_namespace_not_enrolled_means_not_captured():
    snapshot = mesh("apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n", pod({}))
    workload = snapshot.workload("app/pod")
    assert not workload.captured
    assert workload.app_address == workload.address  # the app listens on its pod IP itself


def test_waypoint_identity_and_programmed_condition():
    snapshot = mesh(namespace("app", {}), gateway("wp"))
    (wp,) = snapshot.waypoints
    assert wp.identity == "spiffe://cluster.local/ns/app/sa/wp"
    conditions = {c.type: c for c in snapshot.status_of("Gateway", "app", "wp").conditions}
    assert conditions["Programmed"].status == "True"


def test_non_hbone_listener_is_reported_but_gateway_still_usable():
    snapshot = mesh(
        namespace("app", {}),
        service({"istio.io/use-waypoint": "wp"}),
        """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: web, port: 80, protocol: HTTP}]
""",
    )
    listener = dict(snapshot.status_of("Gateway", "app", "wp").parents)["web"][0]
    assert (listener.status, listener.reason) == ("False", "UnsupportedProtocol")
    assert bound(snapshot, "service") == "app/wp"


def test_services_select_pods_of_their_own_namespace_only():
    other = pod({}).replace("namespace: app", "namespace: other")
    snapshot = mesh(namespace("app", {}), namespace("other", {}), service({}), pod({}), other)
    (port, endpoints) = snapshot.service("app/svc").endpoints[0]
    assert [e.workload for e in endpoints] == ["app/pod"]
