"""An external authorizer for AuthorizationPolicy CUSTOM: Envoy's ext_authz HTTP and gRPC check services.

It behaves as Istio's sample authorizer (`samples/extauthz`, image `istio/ext-authz`), so Istio's
documentation and tests work unchanged against it:
- a request carrying `x-ext-authz: allow` is allowed, any other `x-ext-authz` value is denied;
- without that header, the gRPC check allows a peer whose SPIFFE principal ends in `/sa/<account>`
  (`--allow-service-account`, default `a`); the HTTP check denies (it sees no peer identity);
- allowed: status 200 (HTTP) / OK (gRPC) with `x-ext-authz-check-result: allowed`;
  denied: 403 with `x-ext-authz-check-result: denied` and a body saying which header was missing;
- both add `x-ext-authz-check-received` (what was checked) and `x-ext-authz-additional-header-override`.

The same decisions back the built-in workload for pods running that image (`waypost.local.echo`, flavor
`ext-authz`). Every decision is one line on standard output: `[HTTP][allowed] GET host/path` or `[gRPCv3][denied] …`.

Run: ``python -m waypost.local.extauthz --http 127.0.0.1:8000 --grpc 127.0.0.1:9000 [--ready-file F]``.
Either port may be 0 (the ready file, JSON, then names the bound ports).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHECK_HEADER = "x-ext-authz"
ALLOWED_VALUE = "allow"
RESULT_HEADER = "x-ext-authz-check-result"
RECEIVED_HEADER = "x-ext-authz-check-received"
OVERRIDE_HEADER = "x-ext-authz-additional-header-override"
OVERRIDE_GRPC_VALUE = "grpc-additional-header-override-value"
DENY_BODY = f"denied by ext_authz for not found header `{CHECK_HEADER}: {ALLOWED_VALUE}` in the request"
DEFAULT_ALLOWED_ACCOUNT = "a"  # the sample's -allow_service_account default
_MAX_RECEIVED = 4096  # the received-attributes header is dropped past this size, as the sample does

_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def _bounded(text: str) -> str:
    return text if len(text) <= _MAX_RECEIVED else "<too long>"


def http_decision(method: str, host: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, list[tuple[str, str]], bytes, str]:
    """The HTTP check service's answer: (status, headers, body, decision line). `headers` keys lowercase."""
    received = f"{method} {host}{target}, headers: {headers}, body: [{_bounded(body.decode('utf-8', 'replace'))}]"
    allowed = headers.get(CHECK_HEADER) == ALLOWED_VALUE
    answer = [
        (RESULT_HEADER, "allowed" if allowed else "denied"),
        (OVERRIDE_HEADER, headers.get(OVERRIDE_HEADER, "")),
        (RECEIVED_HEADER, _bounded(received).replace("\r", " ").replace("\n", " ")),
    ]
    line = f"[HTTP][{'allowed' if allowed else 'denied'}] {method} {host}{target}"
    return (200, answer, b"", line) if allowed else (403, answer, DENY_BODY.encode(), line)


class _HttpCheck(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy reuses its connections to the authorizer

    def _check(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer, payload, line = http_decision(self.command, headers.get("host", ""), self.path, headers, body)
        _say(line)
        self.send_response(status)
        for name, value in answer:
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _check

    def log_message(self, format: str, *args) -> None:  # noqa: A002 — the decision line is the log
        pass


GRPC_SERVICE = "envoy.service.auth.v3.Authorization"


def grpc_check(request, allow_service_account: str):
    """The gRPC check service's answer to a CheckRequest: (CheckResponse, decision line)."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.auth.v3 import external_auth_pb2
    from envoy.type.v3 import http_status_pb2
    from google.rpc import code_pb2, status_pb2

    attributes = request.attributes
    http = attributes.request.http
    headers = dict(http.headers)
    if CHECK_HEADER in headers:
        allowed = headers[CHECK_HEADER] == ALLOWED_VALUE
    else:
        allowed = attributes.source.principal.endswith(f"/sa/{allow_service_account}")
    line = f"[gRPCv3][{'allowed' if allowed else 'denied'}] {http.method} {http.host}{http.path} from {attributes.source.principal or '-'}"
    extra = [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=RESULT_HEADER, value="allowed" if allowed else "denied")),
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=RECEIVED_HEADER, value=_bounded(str(attributes)).replace("\n", " "))),
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=OVERRIDE_HEADER, value=OVERRIDE_GRPC_VALUE)),
    ]
    if allowed:
        response = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse(headers=extra)
        )
    else:
        response = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden), body=DENY_BODY, headers=extra
            ),
        )
    return response, line


def _grpc_servicer():
    # Imported here: the HTTP side must not pay for loading the Envoy API messages.
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    class Authorization(external_auth_pb2_grpc.AuthorizationServicer):
        def __init__(self, allow_service_account: str) -> None:
            self.allow_service_account = allow_service_account

        def Check(self, request, context):  # noqa: N802 — the gRPC method name
            response, line = grpc_check(request, self.allow_service_account)
            _say(line)
            return response

    return Authorization, external_auth_pb2_grpc.add_AuthorizationServicer_to_server


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", help="HTTP check service address, host:port")
    parser.add_argument("--grpc", help="gRPC check service address, host:port")
    parser.add_argument("--allow-service-account", default=DEFAULT_ALLOWED_ACCOUNT, help="gRPC: allow peers of this service account")
    parser.add_argument("--ready-file", type=Path, help="written (JSON with the bound ports) once both serve")
    args = parser.parse_args(argv)
    if not args.http and not args.grpc:
        parser.error("give --http, --grpc or both")

    ready: dict[str, str] = {}
    http_server = grpc_server = None
    if args.http:
        host, port = _split(args.http)
        http_server = ThreadingHTTPServer((host, port), _HttpCheck)
        http_server.daemon_threads = True
        ready["http"] = f"{host}:{http_server.server_address[1]}"
        threading.Thread(target=http_server.serve_forever, name="http", daemon=True).start()
    if args.grpc:
        import grpc

        servicer, add = _grpc_servicer()
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add(servicer(args.allow_service_account), grpc_server)
        host, port = _split(args.grpc)
        bound = grpc_server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            print(f"cannot listen on {args.grpc}", file=sys.stderr)
            return 1
        grpc_server.start()
        ready["grpc"] = f"{host}:{bound}"

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(args.ready_file)
    _say(f"serving {json.dumps(ready)}")
    stop.wait()
    if grpc_server is not None:
        grpc_server.stop(grace=1)
    if http_server is not None:
        http_server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
