"""More commands at once than the login node's sshd takes channels (``MaxSessions``, 10 by default).

A refused channel ran nothing; the connection and its other channels are fine. The transport waits
and opens the channel again, instead of dropping the connection under every command in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from airflow_hpc_provider.hooks.slurm import SlurmHook
from airflow_hpc_provider.hooks.ssh import SshTransport

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]


async def test_commands_past_the_servers_channel_limit_wait_for_a_channel_and_all_run_on_one_connection(
    slurm_connection: str,
) -> None:
    target = dataclasses.replace(SlurmHook(slurm_connection).get_target(), max_sessions=16)  # sshd takes 10
    transport = SshTransport(target)
    try:
        results = await asyncio.gather(*(transport.run(f"sleep 0.3; echo {i}\n") for i in range(40)))
    finally:
        await transport.close()
    assert [(r.exit_status, r.text) for r in results] == [(0, f"{i}\n") for i in range(40)]
    assert transport.connections_opened == 1
