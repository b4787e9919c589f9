"""The Grid Engine dialect's scripts against the test cluster's real Grid Engine, over the real sshd.

No operator yet: each test renders and submits through :mod:`airflow_hpc_provider.dialects.sge`
with the provider's own :class:`SshTransport` (host key verified), then polls the way the poller
does (one script, framed output, log reads) until the dialect calls the job final. The scenarios
of each test run concurrently on one SSH connection, and Grid Engine takes h_rt in seconds, so
the module stays quick.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import pytest_asyncio
from airflow.sdk import Connection

from airflow_hpc_provider.dialects import remote_shell, sge
from airflow_hpc_provider.dialects.remote_shell import LogRead
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus, Resources, claim_marker

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

LOG_DIR = ".airflow-hpc/sge-tests"
WRITING = {JobState.RUNNING, JobState.COMPLETING, JobState.SUSPENDED}


@pytest.fixture(scope="module")
def target(cluster_env: dict[str, str]) -> SshTarget:
    if "AIRFLOW_CONN_SGE_LOCAL" not in cluster_env:
        # A missing Grid Engine is a broken test cluster, not a reason to pass quietly.
        pytest.fail("the test cluster has no Grid Engine: bring it up with tests/cluster/up.sh (HPCINFRA_SGE=1)")
    return SshTarget.from_connection(Connection.from_json(cluster_env["AIRFLOW_CONN_SGE_LOCAL"], conn_id="sge_local"))


@pytest_asyncio.fixture
async def transport(target: SshTarget) -> AsyncIterator[SshTransport]:
    transport = SshTransport(target)
    yield transport
    await transport.close()


def key_for(test: str) -> JobKey:
    # a fresh task identity per run, so a job a previous run left behind is never adopted here
    return JobKey.for_task_instance("sge_cluster_tests", test, f"run_{time.time_ns()}", -1, 1)


async def submit(
    transport: SshTransport, spec: JobSpec, key: JobKey, env: dict[str, str] | None = None, **render: str
) -> sge.SubmitOutcome:
    script = sge.submit_script(spec, sge.render_script(spec, **render), key=key, log_dir=LOG_DIR, env=env or {})
    result = await transport.run(script)
    assert result.exit_status == 0, result.error_text
    return sge.parse_submit_output(result.text)


@dataclass
class Watched:
    """What a watch saw: every state in order, the output, and how much of it came before the end."""

    final: JobStatus
    states: list[JobState] = field(default_factory=list)
    output: bytes = b""
    output_before_end: bytes = b""


async def watch(transport: SshTransport, job_id: str, key: JobKey, timeout_s: float = 90) -> Watched:
    """Poll as the poller does until the dialect says the observation is final, reading the log of a
    job that may be writing (whole lines while it runs, the rest once it ended)."""
    dialect = sge.SgeDialect(LOG_DIR)
    log, cursor = sge.log_path(LOG_DIR, key, job_id), sge.cursor_path(LOG_DIR, key, job_id)
    offset: int | None = None
    states: list[JobState] = []
    output = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        token = remote_shell.random_token()
        writing = bool(states) and states[-1] in WRITING
        reads = [LogRead(job_id, log, cursor, offset, 65536)] if writing else []
        result = await transport.run(dialect.poll_script(token, [job_id], reads))
        framed = remote_shell.parse_framed(result.stdout, token)
        report = dialect.read_poll(framed.sections, [job_id])
        assert report.failure is None, report.failure
        if job_id in framed.chunks:
            output += framed.chunks[job_id].data
            offset = framed.chunks[job_id].end
        seen = report.observations[job_id]
        if seen.status is not None and (not states or states[-1] is not seen.status.state):
            states.append(seen.status.state)
        if seen.final:
            assert seen.status is not None
            before_end = output
            while True:  # the rest of the log, as the poller drains an ended job
                token = remote_shell.random_token()
                drain = await transport.run(
                    dialect.poll_script(token, [], [LogRead(job_id, log, cursor, offset, 65536, whole_lines=False)])
                )
                chunk = remote_shell.parse_framed(drain.stdout, token).chunks.get(job_id)
                if chunk is None or not chunk.data:
                    break
                output, offset = output + chunk.data, chunk.end
            return Watched(seen.status, states, output, before_end)
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job_id} not final after {timeout_s}s; states seen: {states}")


async def qstat_names(transport: SshTransport) -> list[str]:
    result = await transport.run("qstat -xml -u \"$(id -un)\" | sed -n 's/.*<JB_name>\\(.*\\)<\\/JB_name>.*/\\1/p'\n")
    return result.text.split()


async def cancel(transport: SshTransport, *job_ids: str) -> None:
    result = await transport.run(sge.SgeDialect(LOG_DIR).cancel_script(list(job_ids)))
    assert result.exit_status == 0, result.error_text


# --- the tests ------------------------------------------------------------------------------------


async def test_jobs_stream_their_output_while_running_and_end_with_their_exit_code(transport):
    lines = 'for i in $(seq 1 12); do echo "line $i"; sleep 0.3; done'
    success = JobSpec(command=lines, job_name="sge stream", resources=Resources(time_limit=timedelta(minutes=2)))
    failure = JobSpec(command="echo 'about to fail' >&2; exit 3", job_name="sge exit 3")
    keys = key_for("stream"), key_for("exit3")
    submitted = await asyncio.gather(submit(transport, success, keys[0]), submit(transport, failure, keys[1]))
    ok, bad = await asyncio.gather(*(watch(transport, s.job_id, k) for s, k in zip(submitted, keys, strict=True)))

    assert (ok.final.state, ok.final.exit_code, ok.final.signal) == (JobState.COMPLETED, 0, None)
    assert ok.output == b"".join(f"line {i}\n".encode() for i in range(1, 13))  # every line, once, in order
    assert ok.output_before_end, "nothing arrived while the job ran"
    assert JobState.RUNNING in ok.states and ok.final.elapsed is not None
    assert (bad.final.state, bad.final.exit_code) == (JobState.FAILED, 3)
    assert bad.output == b"about to fail\n"  # stderr joins the log (-j y)


async def test_values_with_quotes_substitutions_backticks_and_newlines_arrive_verbatim(transport):
    env = {
        "QUOTES": "it's \"double\" and 'single'",
        "SUBST": "$(touch PWNED_SUBST) ${HOME} $HOME",
        "TICKS": "`touch PWNED_TICKS`",
        "LINES": "first line\nsecond; touch PWNED_SEMI\n\n",
        "TABS": "a\tb\\c",
    }
    # each value printed between markers by the job itself, byte for byte
    command = "".join(f"printf '<%s>' \"${name}\"; echo\n" for name in env) + "ls ~ | grep -c PWNED || true"
    spec = JobSpec(command=command, job_name="it's $(nasty) `name`", env_names=tuple(env))
    key = key_for("verbatim")
    outcome = await submit(transport, spec, key, env)
    watched = await watch(transport, outcome.job_id, key)

    assert watched.final.state is JobState.COMPLETED, watched.output
    expected = "".join(f"<{value}>\n" for value in env.values()) + "0\n"
    assert watched.output.decode() == expected
    names = await transport.run(f"qacct -j {outcome.job_id} | awk '$1 == \"jobname\" {{ print $2 }}'\n")
    assert names.text.strip() == sge.job_name(spec, key) == f"it_s___nasty___name_-{key.task_digest}-try1"


async def test_qdel_of_a_running_and_a_pending_job_ends_both_as_cancelled(transport):
    running = JobSpec(command="echo started; sleep 300", job_name="sge qdel running")
    pending = JobSpec(command="echo never", job_name="sge qdel pending", resources=Resources(cpus=100))
    keys = key_for("qdel_running"), key_for("qdel_pending")
    first, second = await asyncio.gather(
        submit(transport, running, keys[0]), submit(transport, pending, keys[1], parallel_environment="smp")
    )
    deadline = time.monotonic() + 60
    while "started" not in (await transport.run(f"cat {LOG_DIR}/{keys[0].task_digest}-{first.job_id}.log\n")).text:
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.5)
    await cancel(transport, first.job_id, second.job_id)
    killed, never_ran = await asyncio.gather(
        watch(transport, first.job_id, keys[0]), watch(transport, second.job_id, keys[1])
    )

    assert (killed.final.state, killed.final.signal) == (JobState.CANCELLED, 9)
    assert killed.output.startswith(b"started\n")
    assert second.state == "qw" and never_ran.final.state is JobState.CANCELLED
    await cancel(transport, first.job_id)  # again, once it is gone: nothing left to cancel is no error


async def test_a_job_over_its_h_rt_ends_as_timeout(transport):
    limit = Resources(time_limit=timedelta(seconds=2))
    spec = JobSpec(command="echo start; sleep 120", job_name="sge h_rt", resources=limit)
    key = key_for("h_rt")
    outcome = await submit(transport, spec, key)
    watched = await watch(transport, outcome.job_id, key)
    assert (watched.final.state, watched.final.signal) == (JobState.TIMEOUT, 9)
    assert "h_rt" in (watched.final.reason or "")
    assert watched.output == b"start\n"


async def test_a_live_job_is_adopted_by_its_key_until_a_trigger_claims_it(transport):
    spec = JobSpec(command="echo adopted", job_name="sge adopt", extra_directives=("-h",))  # held: stays put
    key = key_for("adopt")
    first = await submit(transport, spec, key)
    again = await submit(transport, spec, JobKey(key.task_digest, key.try_number + 1))  # the retry's key
    assert (first.adopted, again.adopted, again.job_id, again.state) == (False, True, first.job_id, "hqw")
    names = await qstat_names(transport)
    assert sum(name.split("-", 1)[1].startswith(key.task_digest) for name in names if "-" in name) == 1

    # once a trigger watched it (the task was cleared), a later try submits afresh
    await transport.run(f": > {shlex.quote(claim_marker(sge.cursor_path(LOG_DIR, key, first.job_id)))}\n")
    fresh = await submit(transport, spec, key)
    assert not fresh.adopted and fresh.job_id != first.job_id
    await cancel(transport, first.job_id, fresh.job_id)
    for job_id in (first.job_id, fresh.job_id):
        assert (await watch(transport, job_id, key)).final.state is JobState.CANCELLED


async def test_queue_project_slots_memory_and_working_dir_reach_the_job(transport):
    spec = JobSpec(
        command='echo "slots=$NSLOTS queue=$QUEUE pwd=$PWD vmem=$(ulimit -v)"',
        job_name="sge resources",
        resources=Resources(partition="all.q", account="testproj", cpus=2, memory_mb=512),
        working_dir="sge work dir",
    )
    key = key_for("resources")
    await transport.run("mkdir -p 'sge work dir'\n")
    outcome = await submit(transport, spec, key, parallel_environment="smp")
    watched = await watch(transport, outcome.job_id, key)
    assert watched.final.state is JobState.COMPLETED, watched.output
    home = (await transport.run('printf %s "$HOME"\n')).text
    # h_vmem is per slot: 256M each, and the shell's limit is for both slots (in KiB)
    assert watched.output.decode() == f"slots=2 queue=all.q pwd={home}/sge work dir vmem={512 * 1024}\n"
    project = await transport.run(f"qacct -j {outcome.job_id} | awk '$1 == \"project\" {{ print $2 }}'\n")
    assert project.text.strip() == "testproj"


async def test_a_job_that_cannot_start_waits_in_error_with_the_reason_until_cancelled(transport):
    spec = JobSpec(command="echo never", job_name="sge no dir", working_dir="/nonexistent/sge-test-dir")
    key = key_for("eqw")
    outcome = await submit(transport, spec, key)
    dialect = sge.SgeDialect(LOG_DIR)
    deadline = time.monotonic() + 60
    while True:
        token = remote_shell.random_token()
        result = await transport.run(dialect.poll_script(token, [outcome.job_id], []))
        seen = dialect.read_poll(remote_shell.parse_framed(result.stdout, token).sections, [outcome.job_id])
        status = seen.observations[outcome.job_id].status
        if status is not None and status.native_state == "Eqw":
            break
        assert time.monotonic() < deadline, f"never in error: {status}"
        await asyncio.sleep(0.5)
    assert status.state is JobState.HELD and not seen.observations[outcome.job_id].final
    assert "can't chdir to /nonexistent/sge-test-dir" in (status.reason or "")
    await cancel(transport, outcome.job_id)
    assert (await watch(transport, outcome.job_id, key)).final.state is JobState.CANCELLED


async def test_a_refused_submission_fails_with_qsubs_words_and_queues_nothing(transport):
    spec = JobSpec(command="echo x", job_name="sge refused", resources=Resources(partition="nosuch.q"))
    result = await transport.run(
        sge.submit_script(spec, sge.render_script(spec), key=key_for("refused"), log_dir=LOG_DIR, env={})
    )
    assert result.exit_status == 1
    assert 'job requests unknown queue "nosuch.q"' in result.error_text
    assert "SUBMITTED" not in result.text
