"""A script cut off on its way to the login node runs none of its commands (real sshd, real sh).

Every script the provider sends travels on stdin to ``sh -s`` as one brace group: the shell reads
the whole group before running any of it, so a link that drops mid-transfer can never leave half
a submission (a job submitted but not recorded) or half a cursor write behind.
"""

from __future__ import annotations

import asyncio
import shlex
import uuid

import asyncssh
import pytest

from airflow_hpc_provider.dialects import remote_shell, slurm
from airflow_hpc_provider.hooks.slurm import SlurmHook
from airflow_hpc_provider.jobs import JobKey, JobSpec
from tests.integration import cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]


async def send_part(script: str, fraction: float, *, hang_up: bool) -> None:
    """Send the first ``fraction`` of ``script`` to ``sh -s``, then end stdin (EOF) or drop the channel."""
    options = SlurmHook("slurm_local").get_target().connect_options()
    async with asyncssh.connect(**options) as conn:
        process = await conn.create_process("sh -s", encoding=None)
        data = script.encode()
        process.stdin.write(data[: int(len(data) * fraction)])
        await process.stdin.drain()
        if hang_up:
            process.close()  # the channel goes away mid-script, as with a dropped link
        else:
            process.stdin.write_eof()
        await process.wait_closed()


def leftovers(directory: str) -> list[str]:
    return cluster.ssh(f"ls -A {shlex.quote(directory)} 2>/dev/null || true").split()


@pytest.mark.parametrize("hang_up", [False, True], ids=["eof", "channel closed"])
async def test_a_submit_script_cut_off_on_the_way_submits_nothing_and_records_nothing(
    slurm_connection: str, hang_up: bool
) -> None:
    log_dir = f"airflow-hpc-cut-{uuid.uuid4().hex[:8]}"
    key = JobKey.for_task_instance("cut", "job", uuid.uuid4().hex, -1, 1)
    spec = JobSpec(command="echo never", job_name="cut-off")
    script = remote_shell.whole_or_nothing(
        slurm.submit_script(spec, slurm.render_script(spec), key=key, log_dir=log_dir, env={"A": "b"})
    )
    try:
        for fraction in (0.3, 0.6, 0.9, 0.99):
            await send_part(script, fraction, hang_up=hang_up)
        await asyncio.sleep(1)
        # Not even the first line (mkdir of the log directory) ran, and no job carries the key.
        assert leftovers(log_dir) == []
        assert cluster.jobs_with_comment_prefix(f"airflow-hpc:{key.task_digest}:") == []
        # The same script sent whole does run: the test would notice a script that never runs.
        await send_part(script, 1.0, hang_up=False)
        assert leftovers(log_dir) != []
        submitted = cluster.ssh(f"cat {shlex.quote(log_dir)}/{key.task_digest}.jobs").split()
        assert len(submitted) == 1
    finally:
        cluster.ssh(
            f"scancel $(cat {shlex.quote(log_dir)}/*.jobs 2>/dev/null) 2>/dev/null; rm -rf {shlex.quote(log_dir)}",
            check=False,
        )
