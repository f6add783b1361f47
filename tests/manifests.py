"""Manifest builders for the e2e tests: the ambient namespace, waypoint and client most tests start from."""

from __future__ import annotations


def ambient_namespace(name: str, use_waypoint: str | None = None) -> str:
    labels = "istio.io/dataplane-mode: ambient" + (f", istio.io/use-waypoint: {use_waypoint}" if use_waypoint else "")
    return f"\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"


def waypoint(namespace: str, name: str = "waypoint", labels: str = "") -> str:
    extra = f", labels: {{{labels}}}" if labels else ""
    return (
        f"\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {namespace}{extra}}}\n"
        "spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n"
    )


def client(namespace: str, name: str = "client", *, image: str = "curl", service_account: str | None = None, node: str | None = None) -> str:
    """A client-only workload (not an echo image): an address and an identity, no server; `node`: its spec.nodeName."""
    sa = f"serviceAccountName: {service_account}, " if service_account else ""
    sa += f"nodeName: {node}, " if node else ""
    return (
        f"\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  selector: {{matchLabels: {{app: {name}}}}}\n"
        f"  template: {{metadata: {{labels: {{app: {name}}}}}, spec: {{{sa}containers: [{{name: c, image: {image}}}]}}}}\n"
    )


def ambient_with_waypoint(namespace: str, *, namespace_uses_waypoint: bool = True) -> str:
    """An ambient namespace with a waypoint named `waypoint` (used by the whole namespace, by default) and a client."""
    return ambient_namespace(namespace, "waypoint" if namespace_uses_waypoint else None) + waypoint(namespace) + client(namespace)


def echo_service(namespace: str, service: str = "svc", app: str = "backend", *, node: str | None = None) -> str:
    """A Service on port 80 (named http) in front of one echo Deployment listening on 8080 (on `node`, if given)."""
    placed = f"nodeName: {node}, " if node else ""
    return (
        f"\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {namespace}}}\n"
        f"spec: {{selector: {{app: {app}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        f"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {app}, namespace: {namespace}}}\n"
        f"spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n"
        f"  template: {{metadata: {{labels: {{app: {app}}}}}, spec: {{{placed}containers: [{{name: c, image: waypost/echo, ports: [{{containerPort: 8080}}]}}]}}}}\n"
    )


def deny_paths(namespace: str, name: str, service: str, *paths: str) -> str:
    """A DENY AuthorizationPolicy on one Service (targetRefs) for requests to `paths`."""
    return (
        f"\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f'spec:\n  targetRefs: [{{kind: Service, group: "", name: {service}}}]\n  action: DENY\n'
        f"  rules: [{{to: [{{operation: {{paths: [{', '.join(paths)}]}}}}]}}]\n"
    )


def service_entry(
    namespace: str, name: str, hosts: list[str], port: int, *, target_port: int | None = None, resolution: str = "STATIC",
    endpoints: tuple[str, ...] = (), waypoint: str | None = None, waypoint_namespace: str | None = None,
) -> str:
    """A ServiceEntry with one HTTP port (named http); `waypoint` binds it with istio.io/use-waypoint."""
    labels = []
    if waypoint:
        labels.append(f"istio.io/use-waypoint: {waypoint}")
    if waypoint_namespace:
        labels.append(f"istio.io/use-waypoint-namespace: {waypoint_namespace}")
    meta = f"{{name: {name}, namespace: {namespace}" + (f", labels: {{{', '.join(labels)}}}" if labels else "") + "}"
    target = f", targetPort: {target_port}" if target_port else ""
    quoted = ", ".join(f'"{h}"' for h in hosts)
    out = (
        f"\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {meta}\n"
        f"spec:\n  hosts: [{quoted}]\n  ports: [{{number: {port}, name: http, protocol: HTTP{target}}}]\n  resolution: {resolution}\n"
    )
    if endpoints:
        out += "  endpoints: [" + ", ".join(f"{{address: {a}}}" for a in endpoints) + "]\n"
    return out


def header_route(namespace: str, name: str, entry: str, header: str, value: str, backend: str) -> str:
    """An HTTPRoute on ServiceEntry `entry` that sets `header: value` and forwards to `backend` (a backendRef
    in YAML flow style)."""
    return (
        f"\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  parentRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: {entry}}}]\n"
        f"  rules: [{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: {header}, value: \"{value}\"}}]}}}}], "
        f"backendRefs: [{backend}]}}]\n"
    )
