"""The state directory of one local mesh: where its pid, status, logs, certificates and bootstraps live."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = ".waypost"


def resolve_state_dir(value: str | os.PathLike[str] | None) -> Path:
    """`--state-dir` if given, else `$WAYPOST_STATE_DIR`, else `./.waypost`."""
    chosen = value or os.environ.get("WAYPOST_STATE_DIR") or DEFAULT_STATE_DIR
    return Path(chosen).absolute()


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def resources_file(self) -> Path:
        return self.root / "resources.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def keeper_pid_file(self) -> Path:
        return self.root / "keeper.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def certs(self) -> Path:
        return self.root / "ca"

    @property
    def bootstraps(self) -> Path:
        return self.root / "bootstrap"

    @property
    def echo_spec(self) -> Path:
        return self.root / "workloads.json"

    @property
    def echo_ready(self) -> Path:
        return self.root / "workloads-ready.json"

    @property
    def control_socket(self) -> Path:
        """The running supervisor's control channel (see `control.py`)."""
        return self.root / "control.sock"

    @property
    def applied_file(self) -> Path:
        """Resources added by `waypost apply` and tombstones of `waypost delete` (see `manifests.py`)."""
        return self.root / "applied.json"

    def ensure(self) -> None:
        for d in (self.root, self.logs, self.certs, self.bootstraps):
            d.mkdir(parents=True, exist_ok=True)

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def write_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.state_file, state)

    def supervisor_pid(self) -> int | None:
        return _live_pid(self.pid_file)

    def keeper_pid(self) -> int | None:
        """The pid of the keeper that restarts this mesh's supervisor (`keeper.py`), if one runs."""
        return _live_pid(self.keeper_pid_file)


def _live_pid(path: Path) -> int | None:
    """The pid a pid file names, if that process is alive."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def json_text(data: Any) -> str:
    """The files' JSON: an object one top-level key per line, each value compact. Not indented: indenting
    takes the json module's pure-Python encoder, which made writing the state of a 1000-Service mesh (and
    of 1000 applied routes) a large part of committing a change."""
    if isinstance(data, dict):
        return json_object_text([(key, json_value_text(data[key])) for key in sorted(data)])
    return json_value_text(data)


def json_value_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def json_object_text(items: list[tuple[str, str]]) -> str:
    """An object from (key, value's JSON text) pairs, as `json_text` lays it out."""
    if not items:
        return "{}"
    return "{\n" + ",\n".join(f"  {json.dumps(key)}: {text}" for key, text in items) + "\n}"


def write_text_atomic(path: Path, text: str) -> None:
    """Replaces `path` with `text` in one step (write a temporary beside it, rename): a reader in another
    process sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json_text(data))


def process_argv(pid: int) -> list[str] | None:
    """The command line process `pid` runs, None when it is gone (or a zombie) or unreadable."""
    if not pid_alive(pid):
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
