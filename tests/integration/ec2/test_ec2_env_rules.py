# ruff: noqa: F811  (pytest fixtures imported from test_ec2_operator are parameters here)
"""Env rules on a throw-away EC2 instance (moto + an instance that boots on this host): the
values travel in the env file over the tunnel, the script holds only value-free lines."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tests.integration.batch.moto_batch import MotoAws
from tests.integration.ec2.conftest import CONN_ID, ec2_extra
from tests.integration.ec2.fake_ec2 import StandIns
from tests.integration.ec2.test_ec2_operator import (  # noqa: F401  (fixtures)
    Lines,
    defer,
    fire,
    nothing_left_running,
    operator,
    task_log,
    ti_for,
    user_data_of,
)

NASTY = 'it\'s "q" $(touch /tmp/airflow-hpc-ec2-injected) `x`\nline two'


async def test_env_rules_of_the_connection_a_group_and_the_task_reach_the_container_verbatim(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = {
        "env_rules": [{"name": "BASE", "set": NASTY}, {"name": "PATH", "prepend": "/opt/conn/bin"}],
        "env_groups": {
            "big": [{"name": "ON_BIG", "set": "${BASE} big", "when": {"partition": "big", "scheduler": "ec2"}}],
        },
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", aws_ec2.connection_uri(ec2=ec2_extra(work_dir), **rules))
    report = (
        "".join(
            f'printf "{name}=%s\\n" "$(printf %s "${name}" | base64 | tr -d "\\n")"\n'
            for name in ("BASE", "ON_BIG", "T")
        )
        + 'echo "PATH=$PATH"\n'
    )
    op = operator(
        partition="big",
        command=report,
        env={},
        env_groups=["big"],
        env_rules=[{"name": "T", "set": "${ON_BIG} task"}],
    )
    ti = ti_for(op)
    trigger = await defer(op, ti)
    payload = await fire(trigger)
    assert payload["status"]["exit_code"] == 0, task_log.text[-3000:]
    seen = dict(line.split("=", 1) for line in task_log.lines if re.match(r"^[A-Z_]+=", line))
    for name, value in {"BASE": NASTY, "ON_BIG": NASTY + " big", "T": NASTY + " big task"}.items():
        assert seen.get(name) == base64.b64encode(value.encode()).decode(), f"{name}: {task_log.text[-2000:]}"
    assert seen["PATH"].startswith("/opt/conn/bin:") and len(seen["PATH"]) > len("/opt/conn/bin:")
    assert "ON_BIG (set by group big)" in task_log.text
    assert "touch" not in user_data_of(aws_ec2, trigger.instance_id)
    assert not Path("/tmp/airflow-hpc-ec2-injected").exists()
