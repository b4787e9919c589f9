"""The AWS hooks' clients: one session and one config for all services, safe to ask for from threads."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from airflow_hpc_provider.hooks.aws import MultiServiceAwsHook


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> MultiServiceAwsHook:
    extra = {"region_name": "eu-west-1", "config_kwargs": {"retries": {"max_attempts": 7, "mode": "standard"}}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_CLIENTS", json.dumps({"conn_type": "aws", "extra": extra}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return MultiServiceAwsHook(aws_conn_id="aws_clients", region_name=None, client_type="batch")


def test_clients_asked_for_from_two_threads_at_once_all_get_the_connections_config(
    hook: MultiServiceAwsHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow first config (the base hook walks the call stack) is when a second thread would slip in.
    # (max_attempts 7 = 8 attempts in all.)
    slow_config = hook._get_config

    def slowly(config: Any) -> Any:
        time.sleep(0.3)
        return slow_config(config)

    monkeypatch.setattr(hook, "_get_config", slowly)
    clients: dict[str, Any] = {}

    def make(service: str) -> None:
        clients[service] = hook.client(service)

    first = threading.Thread(target=make, args=("batch",))
    first.start()
    deadline = time.monotonic() + 30
    while hook._session is None and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    # The first thread is making its client (its session exists, or it holds the lock): ask for two more.
    others = [threading.Thread(target=make, args=(service,)) for service in ("logs", "s3")]
    for thread in (*others,):
        thread.start()
    for thread in (first, *others):
        thread.join()
    assert {service: client.meta.config.retries["total_max_attempts"] for service, client in clients.items()} == {
        "batch": 8,
        "logs": 8,
        "s3": 8,
    }
    assert hook.client("logs") is clients["logs"] and clients["batch"].meta.region_name == "eu-west-1"
