"""Wasm modules for WasmPlugin/TrafficExtension: fetched by the control plane, verified, cached by digest.

Istio's agent pulls modules next to each proxy; the local mesh's control plane does it once for all its
proxies and hands Envoy a local file (`vm_config.code.local.filename`). Supported `url`s:
- `file:///abs/path.wasm` — read from disk;
- `http(s)://…` — fetched (10 s timeout);
- `oci://registry/repository:tag` or `…@sha256:<digest>` (a URL without a scheme is OCI too) — pulled with
  the OCI distribution API (`GET /v2/<repo>/manifests/<ref>`, then the blob), over HTTPS, or plain HTTP
  for `localhost`/loopback registries as Docker allows. The module is either a layer of media type
  `application/vnd.module.wasm.content.layer.v1+wasm` (Wasm OCI artifact) or the `plugin.wasm` file of a
  (gzipped) tar layer (Istio's "compat" Docker image format). No registry credentials: `imagePullSecret`
  needs Kubernetes Secrets, which the local mesh does not have — such a pull fails with a clear error.
  Offline, run a registry on loopback (any OCI registry, or tests' small one) and point `oci://` at it.

`sha256`, when set, must equal the module's digest, or the module is not loaded (the resource's status
says why, and FAIL_CLOSE plugins then deny every request). `imagePullPolicy: Always` (the default for an
OCI `:latest` tag) re-fetches on every configuration change; otherwise a URL is fetched once.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from waypost.api.extensions import normalized_url
from waypost.mesh import MeshSnapshot
from waypost.mesh.model import Condition, ResourceStatus, WasmModule

log = logging.getLogger("waypost.local")

TIMEOUT = 10.0
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
MAX_MODULE = 64 * 1024 * 1024


class FetchError(Exception):
    pass


def _read(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            data = response.read(MAX_MODULE + 1)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"GET {url}: HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"GET {url}: {exc}") from None
    if len(data) > MAX_MODULE:
        raise FetchError(f"GET {url}: larger than {MAX_MODULE} bytes")
    return data


def _registry_base(host: str) -> str:
    name = host.rsplit(":", 1)[0].strip("[]")
    try:
        local = ipaddress.ip_address(name).is_loopback
    except ValueError:
        local = name == "localhost"
    return f"{'http' if local else 'https'}://{host}"


def pull_oci(reference: str) -> bytes:
    """`registry/repo[:tag|@digest]` → the module bytes."""
    host, _, rest = reference.partition("/")
    if not rest:
        raise FetchError(f"OCI reference {reference!r} has no repository")
    if "@" in rest:
        repository, ref = rest.split("@", 1)
    else:
        repository, _, ref = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
    base = f"{_registry_base(host)}/v2/{repository}"
    manifest = json.loads(_read(f"{base}/manifests/{ref}", MANIFEST_TYPES))
    if "manifests" in manifest:  # an index: take the first (Wasm modules are platform independent)
        if not manifest["manifests"]:
            raise FetchError(f"OCI index {reference} lists no manifests")
        manifest = json.loads(_read(f"{base}/manifests/{manifest['manifests'][0]['digest']}", MANIFEST_TYPES))
    layers = manifest.get("layers") or []
    for layer in layers:
        if layer.get("mediaType") == WASM_LAYER:
            return _blob(base, layer["digest"])
    for layer in layers:
        blob = _blob(base, layer["digest"])
        module = _plugin_from_tar(blob)
        if module is not None:
            return module
    raise FetchError(f"OCI image {reference} has no Wasm layer and no plugin.wasm in its layers")


def _blob(base: str, digest: str) -> bytes:
    data = _read(f"{base}/blobs/{digest}")
    algorithm, _, expected = digest.partition(":")
    if algorithm == "sha256" and hashlib.sha256(data).hexdigest() != expected:
        raise FetchError(f"blob {digest} does not match its digest")
    return data


def _plugin_from_tar(blob: bytes) -> bytes | None:
    try:
        raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.lstrip("./") == "plugin.wasm":
                    extracted = archive.extractfile(member)
                    return extracted.read() if extracted else None
    except (OSError, tarfile.TarError, EOFError):
        return None
    return None


def fetch(url: str) -> bytes:
    parts = urllib.parse.urlsplit(normalized_url(url))
    if parts.scheme == "file":
        try:
            return Path(urllib.parse.unquote(parts.path)).read_bytes()
        except OSError as exc:
            raise FetchError(f"cannot read {parts.path}: {exc.strerror or exc}") from None
    if parts.scheme in ("http", "https"):
        return _read(url)
    if parts.scheme == "oci":
        return pull_oci(normalized_url(url)[len("oci://"):])
    raise FetchError(f"unsupported scheme {parts.scheme!r}")


class WasmCache:
    """url → fetched module, kept under `directory/<sha256>.wasm` (shared by every plugin naming it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fetched: dict[str, tuple[str, str | None]] = {}  # url → (sha256, error)

    def _get(self, url: str, always: bool) -> tuple[str, str | None]:
        if url in self._fetched and not always and self._fetched[url][1] is None:
            return self._fetched[url]
        try:
            module = fetch(url)
            if module[:4] != b"\x00asm":
                raise FetchError("not a WebAssembly module (no \\0asm header)")
            digest = hashlib.sha256(module).hexdigest()
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{digest}.wasm"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(module)
                tmp.replace(path)
            result: tuple[str, str | None] = (digest, None)
        except FetchError as exc:
            log.warning("cannot fetch Wasm module %s: %s", url, exc)
            result = ("", f"cannot fetch the module: {exc}")
        self._fetched[url] = result
        return result

    def attach(self, snapshot: MeshSnapshot) -> MeshSnapshot:
        """The snapshot with its modules (fetching what is new) and each extension's `Loaded` condition."""
        modules: dict[str, WasmModule] = {}
        statuses = list(snapshot.statuses)
        for extension in snapshot.extensions:
            wasm = extension.wasm
            if wasm is None:
                continue
            always = wasm.image_pull_policy == "Always" or (
                wasm.image_pull_policy == "UNSPECIFIED_POLICY" and normalized_url(wasm.url).startswith("oci://") and wasm.url.endswith(":latest")
            )
            digest, error = self._get(wasm.url, always and wasm.url not in modules)
            modules.setdefault(wasm.url, WasmModule(wasm.url, digest, str(self.directory / f"{digest}.wasm") if digest else "", error))
            if error is None and wasm.sha256 and digest != wasm.sha256:
                error = f"module sha256 {digest} does not match the expected {wasm.sha256}"  # this plugin's check only
            loaded = (
                Condition("Loaded", "False", "FetchFailed" if "fetch" in error else "DigestMismatch",
                          f"{error}; not loaded, so {'every request is denied' if wasm.fail_strategy != 'FAIL_OPEN' else 'the plugin is skipped'} ({wasm.fail_strategy})")
                if error
                else Condition("Loaded", "True", "Fetched", f"module sha256 {digest}")
            )
            statuses = _with_condition(statuses, extension, loaded)
        return dataclasses.replace(snapshot, wasm_modules=tuple(modules[u] for u in sorted(modules)), statuses=tuple(statuses))


def _with_condition(statuses: list[ResourceStatus], extension, condition: Condition) -> list[ResourceStatus]:
    out = []
    found = False
    for s in statuses:
        if (s.kind, s.namespace, s.name) == (extension.KIND, extension.namespace, extension.name):
            s = dataclasses.replace(s, conditions=tuple(c for c in s.conditions if c.type != condition.type) + (condition,))
            found = True
        out.append(s)
    if not found:
        out.append(ResourceStatus(extension.KIND, extension.namespace, extension.name, (condition,)))
    return out
