"""Delivered means written: the poller commits a job's cursor only past lines a watcher confirmed.

The poller runs its real scripts here with the local /bin/sh on files in a temporary directory (a
transport that runs scripts where the login node would, minus SSH); a small dialect reads each
job's state from a file, so a test plays the scheduler by writing that file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import remote_shell, slurm
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.remote_shell import LogRead, section
from airflow_hpc_provider.hooks.ssh import CommandResult, SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobSpec, JobState, JobStatus, WatchedJob, claim_marker
from airflow_hpc_provider.watching.cluster import REPLAY_MARKER, ClusterPoller, PollerSettings
from airflow_hpc_provider.watching.delivery import LogChannel
from airflow_hpc_provider.watching.events import JobEnded, Notice, OutputLines, StatusChanged, WatchEvent
from airflow_hpc_provider.watching.ssh_watch import follow

pytestmark = pytest.mark.asyncio


class LocalShell(SshTransport):
    """Runs each script with /bin/sh in ``home``, as the login node's ``sh -s`` would."""

    def __init__(self, home: Path) -> None:
        super().__init__(SshTarget(conn_id="local", host="login.invalid"))
        self.home = home
        self.scripts: list[str] = []

    async def run(self, script: str, *, timeout_s: float = 60.0) -> CommandResult:
        self.scripts.append(script)
        done = await asyncio.to_thread(
            subprocess.run,
            ["/bin/sh", "-s"],
            input=remote_shell.whole_or_nothing(script).encode(),
            capture_output=True,
            cwd=self.home,
            timeout=timeout_s,
        )
        self.commands_run += 1
        return CommandResult(done.returncode, done.stdout, done.stderr)

    async def probe(self, *, timeout_s: float) -> bool | None:
        return None

    async def close(self) -> None:
        return None


class FileDialect:
    """``states/<id>`` holds ``STATE``; a missing file means the job is unknown. A terminal
    state is final unless written ``STATE?`` (the queue says it ended, accounting does not yet)."""

    name = "Test"

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        body = "".join(section(token, f"state_{job_id}", f"cat states/{job_id}") for job_id in job_ids)
        return remote_shell.poll_script(token, body, reads)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        observations = {}
        for job_id in job_ids:
            rc, text = sections.get(f"state_{job_id}", (1, ""))
            if rc != 0 or not text.strip():
                observations[job_id] = Observation(None, final=False)
                continue
            word = text.strip()
            native = word.rstrip("?")
            state = JobState(native)
            status = JobStatus(
                job_id=job_id, state=state, native_state=native, exit_code=0 if state.is_terminal else None
            )
            final = state.is_terminal and not word.endswith("?")
            observations[job_id] = Observation(status, final=final)
        return PollReport(observations=observations)

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return "".join(f"echo CANCELLED > states/{job_id}\n" for job_id in job_ids)


class Cluster:
    def __init__(self, home: Path) -> None:
        self.home = home
        (home / "states").mkdir()

    def job(self, job_id: str, *, claimed: bool = False) -> WatchedJob:
        return WatchedJob(job_id, f"{job_id}.log", f"{job_id}.cursor", claimed_by_trigger=claimed)

    def state(self, job_id: str, state: str) -> None:
        (self.home / "states" / job_id).write_text(f"{state}\n")

    def write(self, job_id: str, text: str) -> None:
        with (self.home / f"{job_id}.log").open("a") as handle:
            handle.write(text)

    def records(self, job_id: str) -> list[tuple[int, int, int, int]]:
        path = self.home / f"{job_id}.cursor"
        if not path.exists():
            return []
        return [tuple(int(v) for v in line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]

    def committed(self, job_id: str) -> int:
        return max((record[0] for record in self.records(job_id)), default=0)

    def poller(self, **settings: float) -> tuple[ClusterPoller, LocalShell]:
        transport = LocalShell(self.home)
        poller = ClusterPoller(transport, FileDialect(), PollerSettings(**{"interval_s": 0.2, **settings}))
        return poller, transport


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def numbered(count: int, start: int = 1) -> str:
    return "".join(f"line {i}\n" for i in range(start, start + count))


async def next_output(events, *, acknowledge: bool, seen: list[str] | None = None) -> OutputLines:
    """The next OutputLines event (other events are kept in ``seen`` as text)."""
    while True:
        event: WatchEvent = await asyncio.wait_for(anext(events), 10)
        if isinstance(event, OutputLines):
            if seen is not None:
                seen.extend(event.lines)
            if acknowledge:
                event.acknowledge()
            return event
        if seen is not None and isinstance(event, Notice):
            seen.append(event.message)


async def until(condition, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_position_is_committed_only_once_the_watcher_acknowledges_the_lines_before_it(cluster: Cluster) -> None:
    cluster.state("1", "RUNNING")
    cluster.write("1", numbered(3))
    poller, _ = cluster.poller()
    events = poller.watch(cluster.job("1"))
    try:
        first = await next_output(events, acknowledge=False)
        await asyncio.sleep(0.8)  # several intervals: the chunk is sent, and never committed unconfirmed
        assert first.lines == ("line 1", "line 2", "line 3")
        assert cluster.committed("1") == 0
        assert max(record[1] for record in cluster.records("1")) == len(numbered(3))

        first.acknowledge()
        await until(lambda: cluster.committed("1") == len(numbered(3)))
    finally:
        await events.aclose()
        await poller.close()


async def test_no_second_chunk_is_read_while_the_first_is_unconfirmed(cluster: Cluster) -> None:
    cluster.state("1", "RUNNING")
    cluster.write("1", numbered(3))
    poller, _ = cluster.poller()
    events = poller.watch(cluster.job("1"))
    try:
        first = await next_output(events, acknowledge=False)
        cluster.write("1", numbered(3, start=4))
        await asyncio.sleep(0.8)
        assert max(record[1] for record in cluster.records("1")) == len(numbered(3)), (
            "read on past an unconfirmed chunk"
        )
        first.acknowledge()
        second = await next_output(events, acknowledge=True)
        assert second.lines == ("line 4", "line 5", "line 6")
    finally:
        await events.aclose()
        await poller.close()


async def test_a_watcher_that_resumes_after_a_kill_replays_the_unconfirmed_span_announced_and_loses_nothing(
    cluster: Cluster,
) -> None:
    cluster.state("1", "RUNNING")
    cluster.write("1", numbered(5))
    dead, _ = cluster.poller()
    events = dead.watch(cluster.job("1"))
    written: list[str] = []
    confirmed = await next_output(events, acknowledge=False, seen=written)
    confirmed.acknowledge()
    await until(lambda: cluster.committed("1") == len(numbered(5)))
    cluster.write("1", numbered(4, start=6))
    await next_output(events, acknowledge=False, seen=written)  # handed over, then the process dies
    dead._loop.kill()  # a SIGKILL: no close(), no final commit

    cluster.write("1", numbered(2, start=10))
    cluster.state("1", "COMPLETED")
    reborn, _ = cluster.poller()
    seen: list[str] = []
    events = reborn.watch(cluster.job("1"))
    try:
        while True:
            event = await asyncio.wait_for(anext(events), 10)
            if isinstance(event, OutputLines):
                seen.extend(event.lines)
                event.acknowledge()
            elif isinstance(event, Notice):
                seen.append(event.message)
            elif isinstance(event, JobEnded):
                break
    finally:
        await events.aclose()
        await reborn.close()

    assert written == [f"line {i}" for i in range(1, 10)]
    assert seen == [REPLAY_MARKER.format(count=4)] + [f"line {i}" for i in range(6, 12)]


async def test_a_backlog_is_read_chunk_after_chunk_as_fast_as_they_are_confirmed(cluster: Cluster) -> None:
    cluster.state("1", "RUNNING")
    cluster.write("1", numbered(2000))
    poller, _ = cluster.poller(interval_s=60, max_chunk_bytes=1024)
    events = poller.watch(cluster.job("1"))
    lines: list[str] = []
    chunks = 0
    try:
        async with asyncio.timeout(20):  # far less than one 60 s interval per chunk
            while len(lines) < 2000:
                await next_output(events, acknowledge=True, seen=lines)
                chunks += 1
    finally:
        await events.aclose()
        await poller.close()
    assert lines == [f"line {i}" for i in range(1, 2001)]
    # Chunks follow one another as they are confirmed, not one per status poll: within 20 s a new
    # job gets its first poll and at most five early ones (1, 2, 4, 8, 16 s), against ~19 chunks.
    assert chunks >= 15
    assert poller.polls <= 6


async def test_a_graceful_stop_commits_what_was_acknowledged(cluster: Cluster) -> None:
    cluster.state("1", "RUNNING")
    cluster.write("1", numbered(3))
    poller, _ = cluster.poller(interval_s=60)
    events = poller.watch(cluster.job("1"))
    first = await next_output(events, acknowledge=False)
    first.acknowledge()
    await events.aclose()  # the trigger is cancelled (a triggerer handing over) right after
    await poller.close()
    assert cluster.committed("1") == len(numbered(3))


async def test_an_ended_job_is_read_to_its_last_byte_and_claimed_before_its_end_is_told(cluster: Cluster) -> None:
    cluster.state("1", "RUNNING")
    cluster.write("1", "first\n")
    poller, _ = cluster.poller()
    events = poller.watch(cluster.job("1"))
    seen: list[str] = []
    try:
        await next_output(events, acknowledge=True, seen=seen)
        cluster.write("1", "second\nno newline at the end")
        cluster.state("1", "COMPLETED")
        while True:
            event = await asyncio.wait_for(anext(events), 10)
            if isinstance(event, OutputLines):
                seen.extend(event.lines)
                event.acknowledge()
            if isinstance(event, JobEnded):
                assert await poller.confirm("1", timeout_s=5)
                break
    finally:
        await events.aclose()
        await poller.close()
    assert seen == ["first", "second", "no newline at the end"]
    assert cluster.committed("1") == len("first\nsecond\nno newline at the end")
    assert (cluster.home / claim_marker("1.cursor")).exists(), "a job whose outcome was consumed must be claimed"


async def test_a_trigger_claims_its_job_in_its_first_poll(cluster: Cluster) -> None:
    cluster.state("1", "PENDING")
    poller, _ = cluster.poller()
    events = poller.watch(cluster.job("1", claimed=True))
    first = asyncio.ensure_future(anext(events))  # subscribing starts the polls
    try:
        await until(lambda: (cluster.home / claim_marker("1.cursor")).exists())
    finally:
        first.cancel()
        await poller.close()


async def collect(events, seen: list[str], states: list[str] | None = None) -> None:
    """A watcher that logs and confirms everything at once, until the job ends."""
    async for event in events:
        if isinstance(event, StatusChanged) and states is not None:
            states.append(event.status.native_state)
        if isinstance(event, OutputLines):
            seen.extend(event.lines)
            event.acknowledge()
        elif isinstance(event, Notice):
            seen.append(event.message)
        elif isinstance(event, JobEnded):
            return


def run_again(cluster: Cluster, job_id: str, command: str) -> None:
    """A requeued run of the job: its rendered batch script, run as Slurm would run it again
    (``SLURM_RESTART_COUNT`` set, stdout appended to the same output file)."""
    script = cluster.home / f"{job_id}.sbatch"
    script.write_text(slurm.render_script(JobSpec(command=command, job_name="t")))
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": job_id, "SLURM_RESTART_COUNT": "1"}
    with (cluster.home / f"{job_id}.log").open("ab") as log:
        subprocess.run(["bash", str(script)], stdout=log, env=env, check=True, cwd=cluster.home)


SECOND_RUN = 'echo "second run 1"; echo "second run 2"'
BOTH_RUNS = [
    "line 1",
    "line 2",
    "line 3",
    "half a li",
    "--- run 2 of job 7 (requeued) ---",
    "second run 1",
    "second run 2",
]


@pytest.mark.parametrize("seen_between_runs", [True, False], ids=["gap seen", "gap missed"])
async def test_a_requeued_jobs_own_run_marker_parts_its_runs_exactly_however_the_polls_fall(
    cluster: Cluster, seen_between_runs: bool
) -> None:
    cluster.state("7", "RUNNING")
    cluster.write("7", numbered(2))
    poller, _ = cluster.poller()
    seen: list[str] = []
    states: list[str] = []
    watching = asyncio.ensure_future(collect(poller.watch(cluster.job("7")), seen, states))
    try:
        await until(lambda: len(seen) == 2)
        cluster.write("7", numbered(1, start=3) + "half a li")  # the first run dies mid-line
        if seen_between_runs:
            cluster.state("7", "PENDING")
            await until(lambda: "PENDING" in states, timeout_s=5)
            await asyncio.sleep(0.5)  # more polls of the job between its runs
        run_again(cluster, "7", SECOND_RUN)
        cluster.state("7", "RUNNING")
        await asyncio.sleep(0.5)
        cluster.state("7", "COMPLETED")
        await asyncio.wait_for(watching, 10)
    finally:
        watching.cancel()
        await poller.close()
    assert seen == BOTH_RUNS


async def test_a_watcher_resuming_after_the_requeued_run_began_and_ended_finds_the_marker_between_the_runs(
    cluster: Cluster,
) -> None:
    cluster.state("7", "RUNNING")
    cluster.write("7", numbered(2))
    first, _ = cluster.poller()
    seen: list[str] = []
    events = first.watch(cluster.job("7"))
    await next_output(events, acknowledge=True, seen=seen)
    await until(lambda: cluster.committed("7") == len(numbered(2)))
    await events.aclose()
    await first.close()  # the triggerer stops; the job runs on, is requeued, runs again and ends
    cluster.write("7", numbered(1, start=3) + "half a li")
    run_again(cluster, "7", SECOND_RUN)
    cluster.state("7", "COMPLETED")
    second, _ = cluster.poller()
    try:
        await asyncio.wait_for(collect(second.watch(cluster.job("7")), seen), 10)
    finally:
        await second.close()
    assert seen == BOTH_RUNS


async def test_a_watch_stopped_right_after_it_logged_a_chunk_commits_the_chunk_on_its_way_out(
    cluster: Cluster,
) -> None:
    """A triggerer handing its triggers over (SIGTERM) must not leave lines it logged to be replayed."""
    cluster.state("1", "RUNNING")
    cluster.write("1", numbered(3))
    poller, _ = cluster.poller(interval_s=60)
    job = cluster.job("1")
    logger = logging.getLogger(f"test.stop.{id(cluster)}")
    logger.propagate = False
    watching: asyncio.Future[object] | None = None

    class StopOnLastLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "line 3" and watching is not None:
                watching.cancel()  # the stop arrives the moment the chunk's last line is logged

    logger.addHandler(StopOnLastLine())
    watching = asyncio.ensure_future(
        follow(poller.watch(job), poller, job.job_id, logger, LogChannel(None), "Test job 1")
    )
    with pytest.raises(asyncio.CancelledError):
        await watching
    await poller.close()
    assert cluster.committed("1") == len(numbered(3))
