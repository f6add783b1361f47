"""CLI rendering: plain tables off a terminal, rich ones on it, and the start-up progress line."""

from __future__ import annotations

from waypost.cli import render


def test_plain_table_off_a_terminal(monkeypatch):
    monkeypatch.setattr(render, "rich_output", lambda: False)
    assert render.table(["NAME", "AGE"], [["a-long-name", "1s"], ["b", None]]) == "NAME          AGE\na-long-name   1s\nb"


def test_rich_table_on_a_terminal(monkeypatch):
    monkeypatch.setattr(render, "rich_output", lambda: True)
    text = render.table(["NAME", "AGE"], [["a-long-name", "1s"]])
    lines = [line for line in text.splitlines() if line.strip()]
    assert "NAME" in lines[0] and "AGE" in lines[0]
    assert set(lines[1].strip()) <= {"─", " "}  # the rule under the header
    assert "a-long-name" in lines[2] and "1s" in lines[2]


def test_progress_line():
    assert render.progress({}) == "starting the control plane"
    state = {"proxies": [{"name": "ztunnel~node-0", "ready": True}, {"name": "waypoint~a~w", "ready": False}]}
    assert render.progress(state) == "starting the mesh: 1/2 proxies configured, waiting for waypoint~a~w"
    state["proxies"][1]["ready"] = True
    assert render.progress(state) == "starting the mesh: 2/2 proxies configured, starting workloads"
