"""A run without a server (``evol run`` with no ``PREFECT_API_URL``) on its own local API sends no heartbeats: no
automation watches them there, and each flow run's end would wait for Prefect's heartbeat thread to wake (about a
second per flow run). A run on a server sends them (tests/test_crash_retry.py: a killed run is marked Crashed)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server


def test_flow_runs_on_the_local_api_send_no_heartbeats_and_a_server_run_s_settings_do(monkeypatch):
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine
    from prefect.settings import get_current_settings, temporary_settings

    from flows.local_api import local_api
    from tasks.runtime.crash_detection import HEARTBEAT_S, heartbeat_settings

    sent: list[str] = []
    emit = FlowRunEngine._emit_flow_run_heartbeat

    def spy(self, *args, **kwargs):
        sent.append(self.flow_run.name)
        return emit(self, *args, **kwargs)

    monkeypatch.setattr(FlowRunEngine, "_emit_flow_run_heartbeat", spy)

    @flow
    def child(i: int) -> int:
        return i

    @flow
    def parent(n: int) -> list[int]:
        return [child(i) for i in range(n)]

    with local_api():
        assert get_current_settings().flows.heartbeat_frequency is None
        assert parent(3) == [0, 1, 2]
        assert sent == []
        with temporary_settings(updates=heartbeat_settings()):  # what `evol run` sets on a server
            assert get_current_settings().flows.heartbeat_frequency == HEARTBEAT_S
            assert parent(3) == [0, 1, 2]
    assert len(sent) == 4  # the parent and its 3 subflows, one heartbeat each as they start
