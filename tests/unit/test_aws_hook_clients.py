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


def test_the_base_hooks_own_client_is_the_shared_one_so_the_partition_costs_no_second_session(
    hook: MultiServiceAwsHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[Any] = []
    make_session = hook.get_session

    def counted(*args: Any, **kwargs: Any) -> Any:
        sessions.append(make_session(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(hook, "get_session", counted)
    batch = hook.client()
    assert hook.conn is batch and hook.get_conn() is batch
    assert hook.conn_partition == "aws" and hook.conn_region_name == "eu-west-1"
    assert len(sessions) == 1


class WaitingOperator:
    def execute(self, hook: MultiServiceAwsHook) -> str:
        return hook._get_caller()


def test_the_user_agent_names_the_operator_whose_execute_made_the_hook(hook: MultiServiceAwsHook) -> None:
    assert WaitingOperator().execute(hook) == "WaitingOperator"
    assert hook._get_caller() == "Unknown"  # no execute() on the stack
