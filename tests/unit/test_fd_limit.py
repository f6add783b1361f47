"""An Envoy that would need more listening sockets than the open-file limit allows is refused with a
clear error before it starts, instead of aborting halfway through its config (issue 8's 5000-Service run)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from waypost.envoy import ProxyConfig
from waypost.local import fleet


def _config(sockets: int) -> ProxyConfig:
    extra = [{"address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000 + i}}} for i in range(sockets - 1)]
    listener = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9999}}, "additional_addresses": extra}
    internal = {"name": "internal", "internal_listener": {}}  # binds no socket
    return ProxyConfig("ztunnel~n", "ztunnel", "127.0.0.1", (listener, internal), (), (), ())


def test_a_proxy_needing_more_sockets_than_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, 4096))
    fleet._check_fd_limit("ztunnel~n", _config(4096 - fleet.FD_HEADROOM))  # just fits
    with pytest.raises(OSError, match=r"ztunnel~n would listen on 3073 sockets, more than the open-file limit allows \(4096"):
        fleet._check_fd_limit("ztunnel~n", _config(4096 - fleet.FD_HEADROOM + 1))


def test_the_open_file_limit_is_raised_to_the_hard_one_for_the_process_and_its_children():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        lowered = min(soft, 512) if hard != resource.RLIM_INFINITY else 512
    else:
        lowered = soft
    code = (
        "import resource, subprocess, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({lowered}, {hard if hard != resource.RLIM_INFINITY else 'resource.RLIM_INFINITY'}))\n"
        "from waypost.local.children import raise_fd_limit\n"
        "raise_fd_limit()\n"
        "out = subprocess.run([sys.executable, '-c', 'import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])'],"
        " capture_output=True, text=True).stdout\n"
        "print(out.strip())\n"
    )
    raised = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    assert raised >= hard if hard != resource.RLIM_INFINITY else raised > lowered
