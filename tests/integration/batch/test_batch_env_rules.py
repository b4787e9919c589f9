"""Env rules on AWS Batch (moto over HTTP, the container run locally): the values travel through
the API under carrier names, the script holds only value-free lines, and the container gets them
verbatim, joined with its own PATH."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import HeldJobs, MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI, run

NASTY = 'it\'s "quoted" $(touch /tmp/airflow-hpc-batch-injected) `x`\nsecond line\n'
EXTRA = {
    "env_rules": [{"name": "PATH", "prepend": "/opt/conn/bin"}, {"name": "BASE", "set": NASTY}],
    "env_groups": {
        "tools": [{"name": "DERIVED", "set": "${BASE}|tools"}, {"name": "PATH", "append": "/opt/tools/bin"}],
        "images": [
            {"name": "ON_IMAGE", "set": "image $(y)", "when": {"image": "repo/env:*", "scheduler": "batch"}},
            {"name": "ON_OTHER", "set": "never", "when": {"image": "other/*"}},
        ],
    },
}
NAMES = ("BASE", "DERIVED", "TASK_VALUE", "ON_IMAGE", "ON_OTHER", "PLAIN")
REPORT = (
    "\n".join(
        f'if [ -n "${{{name}+x}}" ]; then printf "{name}=%s\\n" "$(printf %s "${name}" | base64 -w0)"; '
        f'else echo "{name}=unset"; fi'
        for name in NAMES
    )
    + '\necho "PATH=$PATH"\necho "CARRIERS_LEFT=$(env | grep -c "^AIRFLOW_HPC_ENV_")"\n'
)


def test_env_rules_of_the_connection_two_groups_and_the_task_reach_the_container_verbatim(
    aws: MotoAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", aws.connection_uri(**{k: json.dumps(v) for k, v in EXTRA.items()})
    )
    queue = aws.make_queue(f"rules-{uuid.uuid4().hex[:8]}", runs_containers=True)
    operator = BatchRevisionOperator(
        task_id="rules",
        aws_conn_id=CONN_ID,
        job_queue=queue,
        image="repo/env:1",
        command=REPORT,
        env={"PLAIN": "plain `v`"},
        env_groups=["tools", "images"],
        env_rules=[{"name": "TASK_VALUE", "set": "${DERIVED} and $${LITERAL}\n"}, {"name": "PATH", "prepend": "/t"}],
        wait_for_completion=False,
    )
    job = HeldJobs.job(run(operator, FakeTI("rules")))
    script = job.container_overrides["command"][2]
    for text in ("quoted", "touch", "/opt/conn/bin", "tools", "image $(y)", "plain"):
        assert text not in script, f"{text!r} is in the container's script"
    sent = {item["name"] for item in job.container_overrides["environment"]}
    assert "AIRFLOW_HPC_ENV_SET_BASE" in sent and "BASE" not in sent and "PATH" not in sent
    deadline = time.monotonic() + 60
    while job.status not in ("SUCCEEDED", "FAILED"):  # the container runs beside the test: wait for its end
        assert time.monotonic() < deadline, f"the container did not end: {job.status}"
        time.sleep(0.2)
    events = aws.client("logs").get_log_events(logGroupName="/aws/batch/job", logStreamName=str(job._stream_name))
    seen = dict(event["message"].split("=", 1) for event in events["events"] if "=" in event["message"])
    expected = {
        "BASE": NASTY,
        "DERIVED": NASTY + "|tools",
        "TASK_VALUE": NASTY + "|tools and ${LITERAL}\n",
        "ON_IMAGE": "image $(y)",
        "PLAIN": "plain `v`",
    }
    for name, value in expected.items():
        assert seen.get(name) == base64.b64encode(value.encode()).decode(), f"{name} did not arrive verbatim"
    assert seen["ON_OTHER"] == "unset" and seen["CARRIERS_LEFT"] == "0"
    path = seen["PATH"].split(":")
    assert path[:2] == ["/t", "/opt/conn/bin"] and path[-1] == "/opt/tools/bin" and "/usr/bin" in path[2:-1]


def test_a_group_the_connection_lacks_fails_the_task_before_anything_is_submitted(
    aws: MotoAws, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", aws.connection_uri(**EXTRA))
    operator = BatchRevisionOperator(
        task_id="nogroup",
        aws_conn_id=CONN_ID,
        job_queue=queue,
        image="repo/env:1",
        command="true",
        env_groups=["gpu"],
        wait_for_completion=False,
    )
    with pytest.raises(
        JobSpecError, match=r"\['gpu'\] are not groups of connection 'aws_moto' \(its groups: images, tools\)"
    ):
        run(operator, FakeTI("nogroup"))
    assert not aws.client("batch").list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"]
