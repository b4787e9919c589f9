"""SlurmJobTrigger against the real cluster, driven as Airflow's TriggerRunner drives it.

TriggerRunner runs ``trigger.run()`` in a task; on a user action (mark failed, clear) it cancels
that task and then awaits ``on_kill()``; on a triggerer restart it only cancels it, and a new
triggerer rebuilds the trigger from ``serialize()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from airflow_hpc_provider.watching import cluster as poller
from tests.integration import cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]


class LineCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.changed.set()

    async def wait_for(self, pattern: str, timeout_s: float = 60) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(re.search(pattern, line) for line in self.lines):
                self.changed.clear()
                await self.changed.wait()


def collected(trigger: SlurmJobTrigger) -> LineCollector:
    """Give the trigger its own logger so the test reads exactly what it logs."""
    collector = LineCollector()
    logger = logging.getLogger(f"test.trigger.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.addHandler(collector)
    logger.propagate = False
    trigger._log = logger
    return collector


async def submit(conn_id: str, command: str, key: JobKey | None = None, poll_interval: int = 1) -> SlurmJobTrigger:
    """Submit a job as the operator would (adopting a live one of the same task if it may) and
    return the trigger it would defer to."""
    key = key or JobKey.for_task_instance("trigger_tests", "job", uuid.uuid4().hex, -1, 1)
    spec = JobSpec(command=command, job_name="trigger-test")
    transport = SshTransport(SlurmHook(conn_id).get_target())
    try:
        outcome = await submit_job(transport, spec, slurm.render_script(spec), key=key, log_dir=DEFAULT_LOG_DIR, env={})
    finally:
        await transport.close()
    assert outcome.job_id is not None
    return SlurmJobTrigger(
        conn_id=conn_id,
        job_id=outcome.job_id,
        log_path=slurm.log_path(DEFAULT_LOG_DIR, key, outcome.job_id),
        cursor_path=slurm.cursor_path(DEFAULT_LOG_DIR, key, outcome.job_id),
        poll_interval=poll_interval,
    )


async def first_event(trigger: SlurmJobTrigger) -> dict:
    events: AsyncIterator = trigger.run()
    event = await anext(events)
    await events.aclose()
    return event.payload


async def stop_like_a_triggerer(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_marking_the_task_failed_cancels_its_job_through_on_kill(slurm_connection: str) -> None:
    trigger = await submit(slurm_connection, 'echo "started"; sleep 300')
    log = collected(trigger)
    running = asyncio.create_task(first_event(trigger))
    await log.wait_for("^started$")
    await stop_like_a_triggerer(running)
    await trigger.on_kill()
    assert await asyncio.to_thread(cluster.wait_for, trigger.job_id, {"CANCELLED"}, 30) == "CANCELLED"
    assert any("Cancelling Slurm job" in line for line in log.lines)


async def test_a_triggerer_restart_cancels_nothing_and_repeats_or_drops_no_line(slurm_connection: str) -> None:
    trigger = await submit(slurm_connection, 'for i in $(seq 1 12); do echo "line $i"; sleep 0.5; done')
    first_log = collected(trigger)
    running = asyncio.create_task(first_event(trigger))
    await first_log.wait_for("^line 3$")
    await stop_like_a_triggerer(running)  # no on_kill: this is a restart, not a user action
    assert await asyncio.to_thread(cluster.wait_for, trigger.job_id, {"RUNNING"}, 5) == "RUNNING"

    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_hpc_provider.triggers.slurm.SlurmJobTrigger"
    reborn = SlurmJobTrigger(**json.loads(json.dumps(kwargs)))
    second_log = collected(reborn)
    payload = await first_event(reborn)

    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    streamed = [line for line in first_log.lines + second_log.lines if line.startswith("line ")]
    assert streamed == [f"line {i}" for i in range(1, 13)]


def _sshd_serving(local_port: int) -> int:
    """PID of the sshd process holding the server end of our SSH connection."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{cluster.SSH_PORT} and dport = :{local_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = re.findall(r'"sshd",pid=(\d+)', out)
    assert pids, f"no sshd holds port {local_port}: {out!r}"
    return int(pids[0])


async def test_a_connection_dropped_between_polls_is_reopened_and_the_job_still_completes(
    slurm_connection: str,
) -> None:
    trigger = await submit(slurm_connection, 'for i in $(seq 1 10); do echo "tick $i"; sleep 0.5; done')
    log = collected(trigger)
    running = asyncio.create_task(first_event(trigger))
    await log.wait_for("^tick 2$")
    shared = next(s for (_loop, (conn_id, _dialect)), s in poller._shared.items() if conn_id == slurm_connection)
    connection = shared.poller.transport._conn
    assert connection is not None
    os.kill(_sshd_serving(connection.get_extra_info("sockname")[1]), signal.SIGKILL)

    payload = await asyncio.wait_for(running, 60)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    assert [line for line in log.lines if line.startswith("tick ")] == [f"tick {i}" for i in range(1, 11)]
    assert shared.poller.transport.connections_opened == 2


async def test_a_login_node_gone_for_seconds_is_waited_out_with_backoff_and_no_line_is_lost(
    cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Its sshd dies mid-watch (connections and listener) and comes back: the watch carries on."""
    login_node = SecondLoginNode(tmp_path)
    login_node.start()
    try:
        conn = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
        conn["port"] = login_node.PORT
        # Verified through the SSH provider's style of extra: the login node's public key alone.
        del conn["extra"]["known_hosts"]
        host_key = (cluster.CLUSTER_DIR / "ssh/ssh_host_ed25519_key.pub").read_text().split()
        conn["extra"]["host_key"] = " ".join(host_key[:2])
        monkeypatch.setenv("AIRFLOW_CONN_SLURM_FLAKY", json.dumps(conn))
        trigger = await submit("slurm_flaky", 'for i in $(seq 1 16); do echo "tick $i"; sleep 0.5; done')
        log = collected(trigger)
        running = asyncio.create_task(first_event(trigger))
        await log.wait_for("^tick 2$")
        login_node.kill_everything()
        await log.wait_for("cannot reach|dropped")
        await asyncio.sleep(2)
        login_node.start()
        payload = await asyncio.wait_for(running, 90)
    finally:
        login_node.kill_everything()
    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    assert [line for line in log.lines if line.startswith("tick ")] == [f"tick {i}" for i in range(1, 17)]
    assert any("work again" in line for line in log.lines), log.lines


class SecondLoginNode:
    """Another sshd into the same cluster (same config, a free port), owned and killed by one test."""

    def __init__(self, workdir) -> None:
        self.pidfile = workdir / "sshd2.pid"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.PORT = probe.getsockname()[1]

    def start(self) -> None:
        subprocess.run(
            [
                "/usr/sbin/sshd",
                "-f",
                str(cluster.CLUSTER_DIR / "ssh/sshd_config"),
                "-o",
                f"Port={self.PORT}",
                "-o",
                f"PidFile={self.pidfile}",
                "-E",
                str(self.pidfile.with_suffix(".log")),
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # sshd returns once forked, maybe before it listens
            with socket.socket() as attempt:
                if attempt.connect_ex(("127.0.0.1", self.PORT)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the second sshd never listened on {self.PORT}: {self.pidfile.with_suffix('.log')}")

    def kill_everything(self) -> None:
        """The listener (by its PID file) and every connection it serves (by their sockets)."""
        deadline = time.monotonic() + 5
        while not self.pidfile.exists() and time.monotonic() < deadline:  # written once it is up
            time.sleep(0.05)
        if self.pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.pidfile.read_text().strip()), signal.SIGKILL)
            self.pidfile.unlink()
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{self.PORT} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for pid in set(re.findall(r'"sshd",pid=(\d+)', out)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


async def test_a_login_node_with_another_host_key_is_refused_with_a_clear_error(
    cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    conn = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    other_key = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    conn["extra"]["known_hosts"] = f"[127.0.0.1]:{cluster.SSH_PORT} {other_key.with_suffix('.pub').read_text()}"
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_IMPOSTOR", json.dumps(conn))
    trigger = SlurmJobTrigger("slurm_impostor", "1", "x.log", "x.cursor", poll_interval=1)
    payload = await asyncio.wait_for(first_event(trigger), 30)
    assert payload["kind"] == "error"
    assert "connection slurm_impostor" in payload["message"]
    assert "host key" in payload["message"].lower()


async def test_a_login_node_behind_a_jump_host_is_reached_through_it(
    cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local sshd plays both the bastion and the login node; both host keys are verified."""
    conn = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    conn["extra"]["jump_host"] = f"{cluster.USER}@127.0.0.1:{cluster.SSH_PORT}"
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_BEHIND_BASTION", json.dumps(conn))
    transport = SshTransport(SlurmHook("slurm_behind_bastion").get_target())
    try:
        result = await transport.run("id -un\n")
        assert transport._jump is not None and not transport._jump.is_closed(), "no jump connection"
        # The login node's connection runs inside the bastion's: it has no socket of its own.
        assert transport._conn is not None
        inner = transport._conn.get_extra_info("socket")
        assert inner is None or inner.getsockname() == transport._jump.get_extra_info("socket").getsockname()
    finally:
        await transport.close()
    assert result.exit_status == 0 and result.text.strip() == cluster.USER


async def test_after_a_clear_the_next_try_submits_afresh_instead_of_adopting_the_job_being_cancelled(
    slurm_connection: str,
) -> None:
    """Airflow queues the next try at once; the old trigger's on_kill comes a moment later."""
    run_id = uuid.uuid4().hex
    first = await submit(
        slurm_connection, 'echo "first try"; sleep 300', JobKey.for_task_instance("clear", "job", run_id, -1, 1)
    )
    log = collected(first)
    watching = asyncio.create_task(first_event(first))
    await log.wait_for("^first try$")
    watching.cancel()  # the user cleared the task: TriggerRunner cancels, then calls on_kill
    with contextlib.suppress(asyncio.CancelledError):
        await watching

    second = await submit(
        slurm_connection, 'echo "second try"; sleep 300', JobKey.for_task_instance("clear", "job", run_id, -1, 2)
    )
    try:
        assert second.job_id != first.job_id, "the next try adopted the job its cleared try is cancelling"
        await first.on_kill()
        assert await asyncio.to_thread(cluster.wait_for, first.job_id, {"CANCELLED"}, 30) == "CANCELLED"
        assert await asyncio.to_thread(cluster.wait_for, second.job_id, {"RUNNING", "PENDING"}, 30)
    finally:
        cluster.ssh(f"scancel {second.job_id}", check=False)
