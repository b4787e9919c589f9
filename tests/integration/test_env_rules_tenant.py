"""Env rules reach a tenant (a tmux process inside a booked Slurm allocation) verbatim, through
its private env file, with the connection's rules, a group and the task's own."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_hpc_provider.operators.slurm_tenant import SlurmTenantOperator
from airflow_hpc_provider.triggers.slurm_tenant import SlurmTenantTrigger
from tests.integration.batch.test_batch_definitions import FakeTI
from tests.integration.test_slurm_tenant import reservation  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster]

NASTY = 'it\'s "q" $(touch /tmp/airflow-hpc-tenant-injected) `x`\nline two\n'


async def _ended(trigger: SlurmTenantTrigger) -> dict:
    events: AsyncIterator = trigger.run()
    try:
        async with asyncio.timeout(120):
            event = await anext(events)
    finally:
        await events.aclose()
    return dict(event.payload)


def test_env_rules_reach_a_tenant_verbatim_and_the_log_names_their_layers(
    reservation: str,  # noqa: F811
    cluster_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    connection = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    connection["extra"] |= {
        "env_rules": [{"name": "BASE", "set": NASTY}, {"name": "PATH", "prepend": "/opt/conn/bin"}],
        "env_groups": {"g": [{"name": "TENANT_ONLY", "set": "${BASE}|t", "when": {"scheduler": "slurm_tenant"}}]},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_LOCAL", json.dumps(connection))
    out = Path(f"/tmp/airflow-hpc-tenant-env-{uuid.uuid4().hex[:8]}.out")
    report = (
        "".join(
            f'printf "{name}=%s\\n" "$(printf %s "${name}" | base64 -w0)" >> {out}\n'
            for name in ("BASE", "TENANT_ONLY")
        )
        + f'echo "PATH=$PATH" >> {out}\n'
    )
    operator = SlurmTenantOperator(
        task_id=f"tenant-{uuid.uuid4().hex[:6]}",
        reservation=reservation,
        slurm_conn_id="slurm_local",
        command=report,
        env_groups=["g"],
        env_rules=[{"name": "PATH", "append": "/opt/task/bin"}],
        poll_interval=1,
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": FakeTI(operator.task_id)})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, SlurmTenantTrigger)
    payload = asyncio.run(_ended(trigger))
    assert payload["status"]["exit_code"] == 0, payload
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    out.unlink()
    assert seen["BASE"] == base64.b64encode(NASTY.encode()).decode()
    assert seen["TENANT_ONLY"] == base64.b64encode((NASTY + "|t").encode()).decode()
    path = seen["PATH"].split(":")
    assert path[0] == "/opt/conn/bin" and path[-1] == "/opt/task/bin" and "/usr/bin" in path
    logged = "".join(capfd.readouterr())
    assert "TENANT_ONLY (set by group g)" in logged and "touch" not in logged
    assert not Path("/tmp/airflow-hpc-tenant-injected").exists()
