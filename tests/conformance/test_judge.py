"""The conformance judge on hand-made responses: no mesh, so a harness bug shows up here, not as a product failure."""

from __future__ import annotations

import pytest

from tests.conformance.grpc_client import decode_message, encode_message, frame, unframe
from tests.conformance.harness import _groups
from tests.conformance.judge import (
    STRICT, UPSTREAM, Exchange, backend_key, judge_distribution, judge_single, parse_echo, substitute,
)

CORPUS = {"defaults": {"upstream_enforced": ["status", "backend", "request.headers", "request.absent_headers",
                                             "response.headers", "response.absent_headers"]}}


def echo_body(pod: str = "echo-v1-abc-xyz", namespace: str = "gateway-conformance-mesh", url: str = "/",
              host: str = "echo", headers: tuple[tuple[str, str], ...] = ()) -> str:
    lines = ["ServiceVersion=v1", "ServicePort=8080", f"Host={host}", f"URL={url}", f"Namespace={namespace}",
             "Method=GET", "Proto=HTTP/1.1", "IP=127.0.0.1"]
    lines += [f"RequestHeader={k}:{v}" for k, v in headers]
    lines.append(f"Hostname={pod}")
    return "\n".join(lines) + "\n"


def case(expect: dict, derived: tuple[str, ...] = ()) -> dict:
    return {"id": "T/0", "expect": {"status": [200], "backend": None, **expect}, "derived": list(derived)}


def test_parse_echo_reads_fields_and_grpc_pseudo_headers():
    echo = parse_echo("Host=echo:7070\nRequestHeader=:authority:echo:7070\nRequestHeader=x-a:b:c\nHostname=p-1-2\n")
    assert echo.hostname == "p-1-2"
    assert echo.request_headers == [(":authority", "echo:7070"), ("x-a", "b:c")]
    assert parse_echo("no echo here") is None


def test_request_header_values_are_joined_in_order_and_names_compare_case_insensitively():
    body = echo_body(headers=(("X-Header-Add", "some-other-value"), ("X-Header-Add", "add-appends-values")))
    c = case({"request": {"headers": {"x-header-add": "some-other-value,add-appends-values"}}})
    assert judge_single(c, CORPUS, Exchange(200, "200", body=body), STRICT) == []
    c = case({"request": {"headers": {"X-Header-Add": "add-appends-values,some-other-value"}}})
    [failure] = judge_single(c, CORPUS, Exchange(200, "200", body=body), STRICT)
    assert failure.startswith("request.headers[X-Header-Add]: expected 'add-appends-values,some-other-value'")


def test_missing_header_fails_and_absent_header_must_be_absent_in_any_case():
    c = case({"request": {"headers": {"X-Header-Set": "v"}, "absent_headers": ["x-header-remove"]}})
    body = echo_body(headers=(("X-Header-Remove", "val"),))
    failures = judge_single(c, CORPUS, Exchange(200, "200", body=body), UPSTREAM)
    assert failures == ["request.headers[X-Header-Set]: expected 'v' at the backend, got absent",
                        "request.absent_headers[x-header-remove]: expected absent at the backend, got 'val'"]


def test_namespace_and_path_are_strict_only():
    c = case({"backend": "echo-v1", "namespace": "gateway-conformance-mesh", "request": {"path": "/one"}})
    ex = Exchange(200, "200", body=echo_body(namespace="other", url="/two"))
    assert judge_single(c, CORPUS, ex, UPSTREAM) == []
    assert [f.split(":")[0] for f in judge_single(c, CORPUS, ex, STRICT)] == ["namespace", "request.path"]


def test_backend_is_a_pod_name_prefix():
    c = case({"backend": "echo-v2"})
    [failure] = judge_single(c, CORPUS, Exchange(200, "200", body=echo_body(pod="echo-v1-a-b")), UPSTREAM)
    assert failure == "backend: expected a pod named echo-v2-…, got 'echo-v1-a-b'"


@pytest.mark.parametrize("location, ok", [
    ("https://echo/scheme", True),
    ("https://echo:443/scheme", True),       # the scheme's default port may be explicit
    ("https://echo:80/scheme", False),       # port 80 must not be carried over to https
    ("http://echo/scheme", False),
    ("https://echo/scheme?x=1", False),      # the canonical Location has no query here
])
def test_redirect_parts_with_default_port(location: str, ok: bool):
    c = case({"status": [302], "redirect": {"scheme": "https", "host": "echo", "port": None, "path": "/scheme",
                                            "location": "https://echo/scheme"}},
             derived=("redirect.host", "redirect.path", "redirect.location"))
    ex = Exchange(302, "302", headers=[("location", location)])
    assert (judge_single(c, CORPUS, ex, STRICT) == []) is ok
    assert judge_single(c, CORPUS, ex, UPSTREAM) == []   # upstream checks the status only


def test_redirect_explicit_port():
    c = case({"status": [302], "redirect": {"scheme": "http", "host": "echo", "port": "8083", "path": "/port",
                                            "location": "http://echo:8083/port"}})
    assert judge_single(c, CORPUS, Exchange(302, "302", headers=[("Location", "http://echo:8083/port")]), STRICT) == []
    [failure] = [f for f in judge_single(c, CORPUS, Exchange(302, "302", headers=[("Location", "http://echo/port")]),
                                         STRICT) if f.startswith("redirect.port")]
    assert failure == "redirect.port: expected 8083, got none (Location: http://echo/port)"


def test_reaches_backend_false_fails_on_an_echo_answer_or_an_echo_log_line():
    c = case({"status": [404], "reaches_backend": False}, derived=("reaches_backend",))
    assert judge_single(c, CORPUS, Exchange(404, "404"), STRICT) == []
    assert judge_single(c, CORPUS, Exchange(404, "404", body=echo_body()), STRICT)
    assert judge_single(c, CORPUS, Exchange(404, "404", backend_log=("[ns/p] Echoing back …",)), STRICT)
    assert judge_single(c, CORPUS, Exchange(404, "404", backend_log=("[ns/p] Echoing back …",)), UPSTREAM) == []


def test_distribution_checks_shares_backends_and_attribution():
    spec = {"shares": {"echo-v1": 0.7, "echo-v2": 0.3}, "tolerance": 0.05, "allowed_backends": ["echo-v1", "echo-v2"],
            "backends_that_must_receive_traffic": ["echo-v1", "echo-v2"]}
    v1 = Exchange(200, "200", body=echo_body(pod="echo-v1-a-b"))
    v2 = Exchange(200, "200", body=echo_body(pod="echo-v2-a-b"))
    assert judge_distribution(spec, [v1] * 70 + [v2] * 30, [200]) == []
    assert judge_distribution(spec, [v1] * 76 + [v2] * 24, [200])
    assert judge_distribution(spec, [v1] * 69 + [v2] * 30 + [Exchange(500, "500")], [200])
    v3 = Exchange(200, "200", body=echo_body(pod="echo-v3-a-b"))
    assert any(f.startswith("allowed_backends") for f in judge_distribution(spec, [v1] * 70 + [v2] * 29 + [v3], [200]))


def test_backend_key_and_pod_ip_placeholder():
    assert backend_key("echo-v1-7c9d8b6f4-x2kqz") == "echo-v1"
    assert substitute("{POD_IP:app=echo,version=v2}:8080", {"app=echo,version=v2": "127.1.16.2"}) == "127.1.16.2:8080"
    assert substitute("{POD_IP:a=b}:8080", {"a=b": "fd00::1"}) == "[fd00::1]:8080"


def test_grpc_message_round_trip():
    assert decode_message(encode_message("Hostname=x\n")) == "Hostname=x\n"
    assert unframe(frame(b"abc") + frame(b"")) == [b"abc", b""]


def test_a_reaches_backend_case_runs_after_the_cases_sending_the_same_target():
    cases = [
        {"id": "a", "request": {"host": "echo", "target": "/p?x"}, "expect": {}},
        {"id": "b", "request": {"host": "echo", "target": "/q"}, "expect": {}},
        {"id": "c", "request": {"host": "echo", "target": "/p?x"}, "expect": {"reaches_backend": False}},
    ]
    groups = _groups(cases, parallel=True)
    assert sorted([c["id"] for c in g] for g in groups) == [["a", "c"], ["b"]]
