"""RequestAuthentication → Envoy `jwt_authn` for a waypoint chain (istio-ambient-semantics.md §6).

All jwtRules of the attached policies form one filter, providers sorted by issuer. The requirement is
"any one provider valid, or no token at all": a request without a token continues with no request
principal (AuthorizationPolicy decides), a present but invalid token — bad signature, expired, wrong
audience, an issuer this waypoint does not know — is rejected with 401.

The validated payload is stored in dynamic metadata (`envoy.filters.http.jwt_authn` / `payload`),
where the RBAC filters read `request.auth.*` (see envoy/rbac.py).
"""

from __future__ import annotations

from typing import Any

from waypost.api.security import RequestAuthentication

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "payload"
T_JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"


# Keys that verify nothing: a jwksUri whose keys could not be fetched fails closed (its tokens get 401).
NO_KEYS = '{"keys":[{"kty":"oct","kid":"waypost-jwks-unavailable","k":"AA","alg":"HS256"}]}'


def jwt_filters(policies: list[RequestAuthentication], documents: dict[str, str] | None = None) -> list[dict[str, Any]]:
    rules = sorted((r for p in policies for r in p.spec.jwt_rules), key=lambda r: r.issuer)
    if not rules:
        return []
    providers: dict[str, Any] = {}
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.issuer in seen:
            continue  # the same issuer in two policies: the first (sorted) wins, as in Istio
        seen.add(rule.issuer)
        provider: dict[str, Any] = {
            "issuer": rule.issuer,
            # jwksUri keys are fetched by the control plane and pushed inline (a fetch failure: no usable keys).
            "local_jwks": {"inline_string": rule.jwks or (documents or {}).get(rule.jwks_uri or "", NO_KEYS)},
            "forward": rule.forward_original_token,
            "payload_in_metadata": PAYLOAD_KEY,
        }
        if rule.audiences:
            provider["audiences"] = list(rule.audiences)
        if rule.from_headers:
            provider["from_headers"] = [{"name": h.name, **({"value_prefix": h.prefix} if h.prefix else {})} for h in rule.from_headers]
        if rule.from_params:
            provider["from_params"] = list(rule.from_params)
        if rule.from_cookies:
            provider["from_cookies"] = list(rule.from_cookies)
        if rule.output_payload_to_header:
            provider["forward_payload_header"] = rule.output_payload_to_header
        if rule.output_claim_to_headers:
            provider["claim_to_headers"] = [{"header_name": c.header, "claim_name": c.claim} for c in rule.output_claim_to_headers]
        providers[f"origins-{index}"] = provider
    requirements = [{"provider_name": name} for name in providers] + [{"allow_missing": {}}]
    return [
        {
            "name": JWT_FILTER,
            "typed_config": {
                "@type": T_JWT,
                "providers": providers,
                "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": requirements}}}],
            },
        }
    ]
