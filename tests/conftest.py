"""Shared fixtures: running a local mesh from manifests, and the shared/ reference data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
WAYPOST = [sys.executable, "-m", "waypost.cli.main"]


def shared_path(*parts: str) -> Path:
    """A file under ../shared; skips the test where it is absent (fails under CI, where it must exist)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: shared/ must be present under CI")
        pytest.skip(f"{path} is absent (shared/ reference data not available here)")
    return path


def waypost(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*WAYPOST, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"waypost {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


class RunningMesh:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def state(self) -> dict:
        return json.loads((self.state_dir / "state.json").read_text())

    def request(self, source: str, url: str, **kwargs):
        from waypost.local.client import send

        return send(self.state, source, url, **kwargs)

    def service(self, namespace: str, name: str) -> dict:
        return next(s for s in self.state["services"] if s["namespace"] == namespace and s["name"] == name)

    def pods(self, namespace: str, owner: str) -> list[dict]:
        return [w for w in self.state["workloads"] if w["namespace"] == namespace and w["owner"] == owner]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return waypost(*args, "--state-dir", str(self.state_dir), check=check)


def _mesh_starter(directory: Path, started: list[RunningMesh]):
    def start(*sources: str | Path, name: str = "mesh", up_args: tuple[str, ...] = ()) -> RunningMesh:
        state_dir = directory / f"{name}-state"
        args: list[str] = []
        for i, source in enumerate(sources):
            if isinstance(source, Path):
                args += ["-f", str(source)]
            else:
                file = directory / f"{name}-{i}.yaml"
                file.write_text(source)
                args += ["-f", str(file)]
        mesh = RunningMesh(state_dir)
        started.append(mesh)
        waypost("up", *args, *up_args, "--detach", "--state-dir", str(state_dir), check=True)
        return mesh

    return start


@pytest.fixture
def start_mesh(tmp_path: Path) -> Iterator:
    """start_mesh(path_or_yaml_text...) → RunningMesh; every mesh is stopped at teardown."""
    started: list[RunningMesh] = []
    yield _mesh_starter(tmp_path, started)
    for mesh in started:
        waypost("down", "--state-dir", str(mesh.state_dir))


@pytest.fixture(scope="module")
def start_mesh_module(tmp_path_factory) -> Iterator:
    """start_mesh for a mesh that every test of a module shares (stopped after the module)."""
    started: list[RunningMesh] = []
    yield _mesh_starter(tmp_path_factory.mktemp("mesh"), started)
    for mesh in started:
        waypost("down", "--state-dir", str(mesh.state_dir))
