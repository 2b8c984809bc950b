"""A run without a server (``evol run`` with no ``PREFECT_API_URL``) on its own local API sends no heartbeats: no
automation watches them there, and each flow run's end would wait for Prefect's heartbeat thread to wake (about a
second per flow run). A run on a server sends them (tests/test_crash_retry.py: a killed run is marked Crashed)."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.server


def test_flow_runs_on_the_local_api_send_no_heartbeats_and_a_server_run_s_settings_do(monkeypatch):
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine
    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings, temporary_settings

    from flows.local_api import local_api
    from tasks.runtime.crash_detection import HEARTBEAT_S, heartbeat_settings

    sent: list[str] = []
    beats: dict[str, threading.Event] = {}
    emit = FlowRunEngine._emit_flow_run_heartbeat

    def spy(self, *args, **kwargs):
        sent.append(str(self.flow_run.id))
        try:
            return emit(self, *args, **kwargs)
        finally:
            beats.setdefault(str(self.flow_run.id), threading.Event()).set()

    monkeypatch.setattr(FlowRunEngine, "_emit_flow_run_heartbeat", spy)

    def heartbeat_sent(wait: bool) -> None:
        """With heartbeats on, a flow run's first one goes out while it runs: wait for it, so the count below does not
        depend on how fast a busy machine schedules the heartbeat thread."""
        if wait:
            assert beats.setdefault(flow_run.id, threading.Event()).wait(120), "no heartbeat within 120 s"

    @flow
    def child(i: int, wait: bool) -> int:
        heartbeat_sent(wait)
        return i

    @flow
    def parent(n: int, wait: bool) -> list[int]:
        heartbeat_sent(wait)
        return [child(i, wait) for i in range(n)]

    with local_api():
        assert get_current_settings().flows.heartbeat_frequency is None
        assert parent(3, wait=False) == [0, 1, 2]
        assert sent == []
        with temporary_settings(updates=heartbeat_settings()):  # what `evol run` sets on a server
            assert get_current_settings().flows.heartbeat_frequency == HEARTBEAT_S
            assert parent(3, wait=True) == [0, 1, 2]
    assert len(set(sent)) == 4  # the parent and its 3 subflows each sent theirs (one more each every 30 s)
