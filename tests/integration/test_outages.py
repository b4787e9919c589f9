"""Back within seconds after an outage, with every line: a real sshd behind a proxy that fails on cue.

Restarting or stopping sshd does not break established sessions, so the network itself fails
here (``tcp_proxy.py``): connections reset and the port closed, or a link that silently stops
answering. The watch must notice (keepalives), wait without hammering the node, come back within
seconds of the node answering again (the poller probes the SSH banner while it backs off), and
lose no line. The figures for 60 s outages are in ``bench/outage_recovery.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from airflow_hpc_provider.watching import cluster as poller
from tests.integration import cluster
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_slurm_trigger import LineCollector, collected, submit

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

TICKS = 90


@pytest.fixture
def proxied(cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """The ``slurm_proxied`` connection: the test sshd reached through a proxy the test controls."""
    proxy = TcpProxy(cluster.SSH_PORT).start()
    conn = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    conn["port"] = proxy.port
    del conn["extra"]["known_hosts"]  # the key is pinned for the proxy's port instead
    host_key = (cluster.CLUSTER_DIR / "ssh/ssh_host_ed25519_key.pub").read_text().split()
    conn["extra"]["host_key"] = " ".join(host_key[:2])
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_PROXIED", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_LOCAL", cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    try:
        yield proxy
    finally:
        proxy.stop()


class TimedLines(LineCollector):
    """Also keeps when each line arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[tuple[float, str]] = []

    def emit(self, record) -> None:  # type: ignore[no-untyped-def]
        self.arrived.append((time.monotonic(), record.getMessage()))
        super().emit(record)

    def first_tick_after(self, moment: float) -> float | None:
        return next((when for when, line in self.arrived if when > moment and line.startswith("tick ")), None)


async def watched_job(seconds_per_tick: float = 0.5) -> tuple[SlurmJobTrigger, TimedLines, asyncio.Task[dict]]:
    trigger = await submit(
        "slurm_local", f'for i in $(seq 1 {TICKS}); do echo "tick $i"; sleep {seconds_per_tick}; done'
    )
    trigger.conn_id = "slurm_proxied"
    log = collected(trigger)
    timed = TimedLines()
    trigger.log.addHandler(timed)

    async def first_event() -> dict:
        events = trigger.run()
        try:
            return (await anext(events)).payload
        finally:
            await events.aclose()

    running = asyncio.ensure_future(first_event())
    await log.wait_for("^tick 3$", timeout_s=120)
    return trigger, timed, running


def transport_of(conn_id: str):  # type: ignore[no-untyped-def]
    shared = next(s for (_loop, (conn, _dialect)), s in poller._shared.items() if conn == conn_id)
    return shared.poller.transport


def every_tick_once(log: LineCollector) -> None:
    ticks = [line for line in log.lines if line.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(1, TICKS + 1)]


async def test_a_reset_with_the_port_closed_is_waited_out_and_streaming_resumes_within_seconds(
    proxied: TcpProxy,
) -> None:
    _, log, running = await watched_job()
    try:
        proxied.refuse()  # every connection reset, the port closed: a login node gone
        await asyncio.sleep(8)
        reopened = time.monotonic()
        proxied.restore()
        await log.wait_for("work again", timeout_s=60)
        payload = await asyncio.wait_for(running, 120)
    finally:
        running.cancel()
    back = log.first_tick_after(reopened)
    assert back is not None
    print(f"\nreset + port closed 8 s: streaming resumed {back - reopened:.1f}s after the port reopened")
    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    every_tick_once(log)
    assert back - reopened < 20, "the watch did not come back promptly after the node did"


@pytest.mark.slow
async def test_a_link_that_silently_stops_answering_is_dropped_and_replaced_once_it_answers_again(
    proxied: TcpProxy,
) -> None:
    _, log, running = await watched_job()
    transport = transport_of("slurm_proxied")
    try:
        silenced = time.monotonic()
        proxied.blackhole()  # nothing answers, nothing errors: only keepalives can tell
        await log.wait_for("dropped|cannot reach|no answer", timeout_s=60)
        noticed = time.monotonic() - silenced
        await asyncio.sleep(max(0.0, 25 - (time.monotonic() - silenced)))
        restored = time.monotonic()
        proxied.restore()
        payload = await asyncio.wait_for(running, 120)
    finally:
        running.cancel()
    back = log.first_tick_after(restored)
    assert back is not None
    print(
        f"\nsilent drop for 25 s: noticed after {noticed:.1f}s; streaming resumed {back - restored:.1f}s "
        f"after the link answered again; connections opened: {transport.connections_opened}"
    )
    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    every_tick_once(log)
    assert noticed < 30, "a dead link must be noticed within about 15-20 s"
    assert transport.connections_opened >= 2
