"""AuthorizationPolicy CUSTOM → Envoy RBAC (shadow) + ext_authz filters, as Istio builds them for a waypoint.

Source: istio `pilot/pkg/security/authz/builder/{builder,extauthz}.go`. Per provider used on a chain:
- an RBAC filter whose *shadow* rules are that provider's CUSTOM rules, built like DENY rules (§5.7: an
  HTTP-only field is ignored on TCP chains, the rest still matches). It never rejects anything; when a
  rule matches it writes the rule's name into the filter's dynamic metadata under
  `istio_ext_authz_shadow_effective_policy_id`;
- an ext_authz filter enabled only when that metadata starts with `istio-ext-authz-<provider>`: the
  external authorizer is asked about exactly the requests some CUSTOM rule selects.

Failure modes are Istio's and fail closed: a provider that is not declared, or cannot be resolved, turns
its policies' rules into DENY rules (`…-deny-due-to-bad-CUSTOM-action`); so do the rules of every provider
when one chain would need several (Istio allows that only behind PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS,
off by default). On TCP chains only gRPC providers apply (Envoy's network ext_authz speaks gRPC only);
an HTTP provider is skipped there, as in Istio.
"""

from __future__ import annotations

from typing import Any

from waypost.api.meshconfig import duration_seconds
from waypost.api.security import AuthorizationPolicy
from waypost.mesh.model import AuthzProvider, MeshSnapshot

from . import rbac

T_HTTP_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
T_NET_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"
HTTP_RBAC = "envoy.filters.http.rbac"
NET_RBAC = "envoy.filters.network.rbac"
SHADOW_PREFIX = "istio_ext_authz_"  # the RBAC filter's shadow_rules_stat_prefix, hence its metadata key prefix
MATCH_PREFIX = "istio-ext-authz"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
DEFAULT_TIMEOUT = "600s"  # istio timeoutOrDefault


def policy_name(provider: str, namespace: str, name: str, rule: int) -> str:
    return f"{MATCH_PREFIX}-{provider}-ns[{namespace}]-policy[{name}]-rule[{rule}]"


def _rules(policies: list[AuthorizationPolicy], provider: str, tcp: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(policies, key=lambda p: (p.namespace, p.name)):
        for i, rule in enumerate(p.spec.rules or []):
            out[policy_name(provider, p.namespace, p.name, i)] = rbac.rule_policy(p, rule, tcp)
    return out


def _by_provider(policies: list[AuthorizationPolicy]) -> dict[str, list[AuthorizationPolicy]]:
    groups: dict[str, list[AuthorizationPolicy]] = {}
    for p in policies:
        if p.spec.action == "CUSTOM" and p.spec.provider is not None:
            groups.setdefault(p.spec.provider.name, []).append(p)
    return dict(sorted(groups.items()))


def chain_error(policies: list[AuthorizationPolicy], snapshot: MeshSnapshot) -> dict[str, str]:
    """provider name → why its CUSTOM rules on this chain are enforced as DENY (empty when all is well)."""
    groups = _by_provider(policies)
    if len(groups) > 1:
        reason = (
            f"multiple CUSTOM authorization providers per workload are not supported, found {len(groups)} "
            f"providers: {list(groups)}"
        )
        return {name: reason for name in groups}
    out = {}
    for name in groups:
        provider = snapshot.authz_provider(name)
        if provider.error:
            out[name] = provider.error
    return out


def _deny_filter(rules: dict[str, Any], tcp: bool, stat_prefix: str) -> dict[str, Any]:
    denied = {"action": "DENY", "policies": {k + BAD_CUSTOM_SUFFIX: v for k, v in rules.items()}}
    if tcp:
        return {"name": NET_RBAC, "typed_config": {"@type": rbac.T_NET_RBAC, "stat_prefix": f"{stat_prefix}custom.", "rules": denied}}
    return {"name": HTTP_RBAC, "typed_config": {"@type": rbac.T_HTTP_RBAC, "rules": denied, "rules_stat_prefix": f"{stat_prefix}custom."}}


def _enabled_when(filter_name: str, provider: str) -> dict[str, Any]:
    return {
        "filter": filter_name,
        "path": [{"key": f"{SHADOW_PREFIX}shadow_effective_policy_id"}],
        "value": {"string_match": {"prefix": f"{MATCH_PREFIX}-{provider}"}},
    }


def _header_patterns(values: list[str]) -> dict[str, Any]:
    """Istio generateHeaders: `x*` prefix, `*x` suffix, else exact; always case-insensitive."""
    patterns = []
    for v in values:
        if v.startswith("*"):
            patterns.append({"suffix": v[1:], "ignore_case": True})
        elif v.endswith("*"):
            patterns.append({"prefix": v[:-1], "ignore_case": True})
        else:
            patterns.append({"exact": v, "ignore_case": True})
    return {"patterns": patterns}


def cluster(provider: AuthzProvider, snapshot: MeshSnapshot) -> tuple[str, bool]:
    """(cluster name, HTTP/2?) for the provider's service port.

    Istio's name is the service port's outbound cluster. gRPC needs HTTP/2, so a gRPC provider on a port
    not declared HTTP/2 or gRPC gets a cluster of its own rather than changing that port's HTTP cluster."""
    target = snapshot.service(provider.service) if provider.service else None
    port = target.port(provider.port) if target is not None else None
    declared_h2 = port is not None and port.protocol in ("HTTP2", "GRPC")
    if provider.grpc and not declared_h2:
        return f"outbound|{provider.port}|ext-authz-grpc|{provider.hostname}", True
    return f"outbound|{provider.port}||{provider.hostname}", declared_h2


def _timeout(config) -> str:
    if config.timeout is None:
        return DEFAULT_TIMEOUT
    return f"{duration_seconds(config.timeout):g}s"


def _grpc_service(provider: AuthzProvider, snapshot: MeshSnapshot) -> dict[str, Any]:
    return {
        "envoy_grpc": {"cluster_name": cluster(provider, snapshot)[0], "authority": provider.hostname},
        "timeout": _timeout(provider.config),
    }


def _common(provider: AuthzProvider) -> dict[str, Any]:
    config = provider.config
    out: dict[str, Any] = {"transport_api_version": "V3", "failure_mode_allow": config.fail_open}
    if config.status_on_error:
        out["status_on_error"] = {"code": int(config.status_on_error)}
    if config.clear_route_cache:
        out["clear_route_cache"] = True
    body = config.include_request_body_in_check
    if body is not None:
        out["with_request_body"] = {
            "max_request_bytes": body.max_request_bytes, "allow_partial_message": body.allow_partial_message,
            "pack_as_bytes": body.pack_as_bytes,
        }
    return out


def http_ext_authz(provider: AuthzProvider, snapshot: MeshSnapshot) -> dict[str, Any]:
    """The HTTP ext_authz filter config of one provider (istio generateHTTPConfig / generateGRPCConfig)."""
    config = provider.config
    out = {"@type": T_HTTP_EXT_AUTHZ, **_common(provider), "filter_enabled_metadata": _enabled_when(HTTP_RBAC, provider.name)}
    if provider.grpc:
        out["grpc_service"] = _grpc_service(provider, snapshot)
        return out
    service: dict[str, Any] = {
        # The URI is required but only the cluster and timeout are used.
        "server_uri": {"uri": f"http://{provider.hostname}", "cluster": cluster(provider, snapshot)[0], "timeout": _timeout(config)},
    }
    if config.path_prefix:
        service["path_prefix"] = config.path_prefix
    if config.include_additional_headers_in_check:
        service["authorization_request"] = {
            "headers_to_add": [{"key": k, "value": v} for k, v in sorted(config.include_additional_headers_in_check.items())]
        }
    response = {}
    if config.headers_to_upstream_on_allow:
        response["allowed_upstream_headers"] = _header_patterns(config.headers_to_upstream_on_allow)
    if config.headers_to_downstream_on_deny:
        response["allowed_client_headers"] = _header_patterns(config.headers_to_downstream_on_deny)
    if config.headers_to_downstream_on_allow:
        response["allowed_client_headers_on_success"] = _header_patterns(config.headers_to_downstream_on_allow)
    if response:
        service["authorization_response"] = response
    out["http_service"] = service
    # includeHeadersInCheck is deprecated: only used when includeRequestHeadersInCheck is unset.
    allowed = config.include_request_headers_in_check or config.include_headers_in_check
    if allowed:
        out["allowed_headers"] = _header_patterns(allowed)
    return out


def _filters(policies: list[AuthorizationPolicy], snapshot: MeshSnapshot, tcp: bool, stat_prefix: str) -> list[dict[str, Any]]:
    groups = _by_provider(policies)
    errors = chain_error(policies, snapshot)
    out: list[dict[str, Any]] = []
    for name, members in groups.items():
        rules = _rules(members, name, tcp)
        if name in errors:
            out.append(_deny_filter(rules, tcp, stat_prefix))
            continue
        provider = snapshot.authz_provider(name)
        if tcp and not provider.grpc:
            continue  # Envoy's network ext_authz only speaks gRPC: Istio skips HTTP providers on TCP chains
        shadow = {"action": "DENY", "policies": rules}
        if tcp:
            out.append({"name": NET_RBAC, "typed_config": {"@type": rbac.T_NET_RBAC, "stat_prefix": f"{stat_prefix}custom.", "shadow_rules": shadow, "shadow_rules_stat_prefix": SHADOW_PREFIX}})
            out.append(
                {
                    "name": "envoy.filters.network.ext_authz",
                    "typed_config": {
                        "@type": T_NET_EXT_AUTHZ, "stat_prefix": "tcp.", "transport_api_version": "V3",
                        "failure_mode_allow": provider.config.fail_open, "grpc_service": _grpc_service(provider, snapshot),
                        "filter_enabled_metadata": _enabled_when(NET_RBAC, name),
                    },
                }
            )
        else:
            out.append({"name": HTTP_RBAC, "typed_config": {"@type": rbac.T_HTTP_RBAC, "shadow_rules": shadow, "shadow_rules_stat_prefix": SHADOW_PREFIX}})
            out.append({"name": "envoy.filters.http.ext_authz", "typed_config": http_ext_authz(provider, snapshot)})
    return out


def http_filters(policies: list[AuthorizationPolicy], snapshot: MeshSnapshot, stat_prefix: str = "") -> list[dict[str, Any]]:
    return _filters(policies, snapshot, tcp=False, stat_prefix=stat_prefix)


def network_filters(policies: list[AuthorizationPolicy], snapshot: MeshSnapshot, stat_prefix: str = "") -> list[dict[str, Any]]:
    return _filters(policies, snapshot, tcp=True, stat_prefix=stat_prefix)


def providers_used(policies: list[AuthorizationPolicy], snapshot: MeshSnapshot) -> list[AuthzProvider]:
    """Usable providers that some chain's CUSTOM policies call: each needs a cluster on the waypoint."""
    errors = chain_error(policies, snapshot)
    return [snapshot.authz_provider(name) for name in _by_provider(policies) if name not in errors]
