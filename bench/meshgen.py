"""Synthetic meshes for the benchmarks, as manifest text (what a user would `kubectl apply`).

`synthetic_mesh(services=N)` is the mesh of the control-plane scale scenario: one ambient namespace,
one waypoint, N Services of 2 pods each (one Deployment and one ServiceAccount per Service), one
HTTPRoute and one AuthorizationPolicy per Service. `deployments=D` lets N Services share D Deployments
instead (Service i selects Deployment i mod D): same number of Services, routes and policies, far fewer
workloads. The pods use a non-echo image, so they are client-only: nothing has to listen for them.
"""

from __future__ import annotations

NAMESPACE = "scale"

HEADER = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: {ns}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      serviceAccountName: {name}
      containers: [{{name: app, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 8080}}]
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {service}, port: 8080}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: {service}, port: 8080}}]
"""

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: {service}}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{ns}/sa/{caller}]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["{prefix}/*"]}}}}]
"""


def join(docs: list[str]) -> str:
    return "---\n".join(docs)


def synthetic_mesh(services: int, *, deployments: int | None = None, replicas: int = 2, ns: str = NAMESPACE) -> str:
    """N Services (2 pods each unless `deployments` pools them), each with one HTTPRoute and one policy."""
    pool = services if deployments is None else deployments
    docs = [HEADER.format(ns=ns)]
    docs += [DEPLOYMENT.format(name=f"app{d}", ns=ns, replicas=replicas) for d in range(pool)]
    for i in range(services):
        name, app = f"svc{i}", f"app{i % pool}"
        docs.append(SERVICE.format(name=name, ns=ns, app=app))
        docs.append(ROUTE.format(name=name, ns=ns, service=name, prefix=f"/{name}"))
        # The caller is another Service's identity, so each rule names a distinct principal.
        docs.append(POLICY.format(name=name, ns=ns, service=name, caller=f"app{(i + 1) % pool}", prefix=f"/{name}"))
    return join(docs)


def routes_only(services: int, *, ns: str = NAMESPACE, prefix: str = "/bulk") -> str:
    """One more HTTPRoute per Service of `synthetic_mesh` (the "1000 routes at once" change)."""
    return join(
        [ROUTE.format(name=f"bulk{i}", ns=ns, service=f"svc{i}", prefix=f"{prefix}{i}") for i in range(services)]
    )
