"""Git-pinned code on the real cluster: the commit a task runs is the one resolved when it started.

The repository is a bare one on a git host of its own (an sshd on 127.0.0.1 that lets a deploy key
in through git-shell, see git_host.py); the jobs run on the local Slurm (and PBS) cluster, which
makes the checkout with that deploy key. Each job writes what it ran (the repository's
version.txt, ``git rev-parse HEAD`` and ``pwd -P``) to a result file the test reads over SSH.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.errors import JobFailedError, RemoteCommandError
from airflow_hpc_provider.git_pin import CheckoutPlace, GitSource
from airflow_hpc_provider.hooks.git_checkout import DeployKey, check_out, upload_key
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.operators.git_pinned import GIT_SHA_XCOM_KEY
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.operators.slurm_tenant import SlurmTenantOperator
from tests.integration import cluster, git_host
from tests.integration.conftest import EXAMPLE_DAGS
from tests.integration.test_slurm_tenant import book, release

DEPLOY_CONN = "git_deploy"
HOME = cluster.CLUSTER_DIR / "home" / cluster.USER
SGE_HOME = cluster.CLUSTER_DIR / "home" / "sgeuser"  # the local Grid Engine runs jobs as this user


class FakeTI:
    """What the operators read of a task instance, and the XComs they push."""

    def __init__(self, task_id: str, run_id: str, *, map_index: int = -1, try_number: int = 1) -> None:
        self.dag_id = "git_pinned_tests"
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


@pytest.fixture(scope="module")
def host(cluster_env: dict[str, str]) -> Iterator[git_host.GitHost]:
    started = git_host.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def log_dir(cluster_env: dict[str, str]) -> Iterator[str]:
    """A log_dir of this module's own (pins and checkouts live under it), removed afterwards."""
    relative = f".airflow-hpc/git-tests-{uuid.uuid4().hex[:10]}"
    yield relative
    cluster.ssh(f"rm -rf -- {relative}")
    shutil.rmtree(SGE_HOME / relative, ignore_errors=True)  # Grid Engine's user (this host is the cluster)


@pytest.fixture
def connections(
    cluster_env: dict[str, str], host: git_host.GitHost, log_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SLURM_LOCAL", "PBS_LOCAL", "SGE_LOCAL"):
        conn = json.loads(cluster_env[f"AIRFLOW_CONN_{name}"])
        conn["extra"]["log_dir"] = log_dir
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(conn))
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEPLOY_CONN.upper()}", host.connection_json())


def git_arguments(host: git_host.GitHost, **more: str) -> dict[str, str]:
    return {"repo": host.url, "ref": "main", "key_conn_id": DEPLOY_CONN, **more}


# Waits (when GIT_TEST_GO names a file) until the test lets it go, then says what it runs.
REPORT = (
    'if [ -n "${GIT_TEST_GO:-}" ]; then while [ ! -e "$GIT_TEST_GO" ]; do sleep 0.2; done; fi\n'
    '{ cat "$(git rev-parse --show-toplevel)/version.txt"; git rev-parse HEAD; pwd -P; } > "$GIT_TEST_RESULT"\n'
)


def slurm_task(
    host: git_host.GitHost, task_id: str, result: str, *, go: str = "", **kwargs: Any
) -> SlurmSubmitOperator:
    env = {"GIT_TEST_RESULT": f"{HOME}/{result}", "GIT_TEST_GO": f"{HOME}/{go}" if go else ""}
    return SlurmSubmitOperator(
        task_id=task_id,
        slurm_conn_id="slurm_local",
        command=kwargs.pop("command", REPORT),
        env=env,
        time_limit=5,
        deferrable=False,
        poll_interval=0.5,
        git=kwargs.pop("git", git_arguments(host)),
        **kwargs,
    )


def ran(result: str) -> tuple[str, str, str]:
    """(version.txt, HEAD, working directory) as the job wrote them."""
    version, head, directory = cluster.ssh(f"cat -- {result}").splitlines()
    return version, head, directory


def checkouts_of(host: git_host.GitHost) -> str:
    """``git-checkouts/<repo digest>``: where the host's repository is checked out, per commit."""
    source = GitSource.parse(git_arguments(host), "any")
    assert source is not None
    return f"git-checkouts/{source.repo_digest}"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_two_tasks_on_main_started_before_and_after_a_new_commit_run_the_commits_resolved_at_their_start(
    host: git_host.GitHost, connections: None, log_dir: str
) -> None:
    first_sha = host.commit({"version.txt": "first\n"}, "first")
    run_id = unique("run")
    go = unique("go")
    before = slurm_task(host, "before", unique("before"), go=go)
    before_ti = FakeTI("before", run_id)
    errors: list[BaseException] = []

    def run_before() -> None:
        try:
            before.execute({"ti": before_ti})  # type: ignore[arg-type]
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run_before)
    thread.start()
    deadline = time.monotonic() + 120
    while GIT_SHA_XCOM_KEY not in before_ti.xcom:  # the first task has started: its commit is pinned
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.1)
    second_sha = host.commit({"version.txt": "second\n"}, "second")
    after = slurm_task(host, "after", unique("after"))
    after_ti = FakeTI("after", run_id)
    after.execute({"ti": after_ti})  # type: ignore[arg-type]
    cluster.ssh(f"touch -- {go}")  # only now does the first job read its checkout
    thread.join(timeout=300)
    assert not errors, errors

    assert before_ti.xcom[GIT_SHA_XCOM_KEY] == first_sha
    assert after_ti.xcom[GIT_SHA_XCOM_KEY] == second_sha
    version, head, directory = ran(before.env["GIT_TEST_RESULT"])
    assert (version, head) == ("first", first_sha)
    assert directory.endswith(f"/{log_dir}/{checkouts_of(host)}/{first_sha}")
    assert ran(after.env["GIT_TEST_RESULT"])[:2] == ("second", second_sha)


def test_a_retry_and_another_map_index_started_after_a_new_commit_run_the_commit_the_first_try_resolved(
    host: git_host.GitHost, connections: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pinned = host.commit({"version.txt": "pinned\n"}, "pinned")
    run_id = unique("run")
    fail_first = unique("fail")
    cluster.ssh(f"touch -- {fail_first}")
    command = REPORT + f"if [ -e {HOME}/{fail_first} ]; then rm -f -- {HOME}/{fail_first}; exit 3; fi\n"
    first_try = slurm_task(host, "mapped", unique("try1"), command=command)
    first_ti = FakeTI("mapped", run_id, map_index=0, try_number=1)
    with pytest.raises(JobFailedError):
        first_try.execute({"ti": first_ti})  # type: ignore[arg-type]
    newer = host.commit({"version.txt": "newer\n"}, "newer")
    assert newer != pinned

    # A new try is a fresh operator and task instance: no XCom of the first try reaches it.
    retry = slurm_task(host, "mapped", unique("try2"), command=command)
    retry_ti = FakeTI("mapped", run_id, map_index=0, try_number=2)
    other_index = slurm_task(host, "mapped", unique("index1"), command=command)
    other_ti = FakeTI("mapped", run_id, map_index=1, try_number=1)
    capsys.readouterr()
    retry.execute({"ti": retry_ti})  # type: ignore[arg-type]
    other_index.execute({"ti": other_ti})  # type: ignore[arg-type]

    for operator, ti in ((first_try, first_ti), (retry, retry_ti), (other_index, other_ti)):
        assert ti.xcom[GIT_SHA_XCOM_KEY] == pinned
        assert ran(operator.env["GIT_TEST_RESULT"])[:2] == ("pinned", pinned)
    pinned_earlier = "pinned when an earlier try or map index of this task in this DAG run started"
    assert capsys.readouterr().out.count(pinned_earlier) == 2
    # Another DAG run of the same task resolves main anew.
    later_ti = FakeTI("mapped", unique("run"))
    slurm_task(host, "mapped", unique("later")).execute({"ti": later_ti})  # type: ignore[arg-type]
    assert later_ti.xcom[GIT_SHA_XCOM_KEY] == newer


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "sge"])
def test_a_relative_working_dir_runs_inside_the_checkouts_path(
    host: git_host.GitHost, connections: None, scheduler: str
) -> None:
    sha = host.commit({"version.txt": f"for {scheduler}\n", "tools/run/.keep": ""}, f"tools for {scheduler}")
    result = f"{SGE_HOME if scheduler == 'sge' else HOME}/{unique('workdir')}"
    env = {"GIT_TEST_RESULT": result, "GIT_TEST_GO": ""}
    arguments: dict[str, Any] = {
        "task_id": "workdir",
        "command": REPORT,
        "env": env,
        "deferrable": False,
        "poll_interval": 0.5,
        "git": git_arguments(host, path="tools"),
        "working_dir": "run",
    }
    ti = FakeTI("workdir", unique("run"))
    operator = {
        "slurm": lambda: SlurmSubmitOperator(slurm_conn_id="slurm_local", time_limit=5, **arguments),
        "pbs": lambda: PbsOperator(pbs_conn_id="pbs_local", walltime=5, **arguments),
        "sge": lambda: SgeOperator(sge_conn_id="sge_local", time_limit=5, **arguments),
    }[scheduler]()
    operator.execute({"ti": ti})  # type: ignore[arg-type]
    if scheduler == "sge":  # written by Grid Engine's user: read here, on the cluster host
        version, head, directory = Path(result).read_text().splitlines()
        Path(result).unlink()
    else:
        version, head, directory = ran(result)
    assert (version, head) == (f"for {scheduler}", sha)
    assert directory.endswith(f"/{checkouts_of(host)}/{sha}/tools/run")


def test_the_checkout_of_a_commit_is_made_once_when_several_tasks_start_together(
    host: git_host.GitHost, connections: None, log_dir: str
) -> None:
    sha = host.commit({"version.txt": "together\n", "data.bin": "x" * 2_000_000}, "together")
    from airflow.sdk import BaseHook

    target = SshTarget.from_connection(BaseHook.get_connection("slurm_local"))
    source = GitSource.parse(git_arguments(host), "t")
    assert source is not None
    run_id = unique("run")

    async def start(task_id: str) -> Any:
        transport = SshTransport(target)  # one SSH connection each: they really run at once
        try:
            place = CheckoutPlace(log_dir=log_dir, pin_digest=source.pin_digest("together", run_id, task_id))
            return await check_out(transport, source, place, DeployKey.from_connection(DEPLOY_CONN))
        finally:
            await transport.close()

    async def all_of_them() -> list[Any]:
        return await asyncio.gather(*(start(f"task{index}") for index in range(6)))

    results = asyncio.run(all_of_them())
    checkouts = [checkout for checkout, _ in results]
    assert {checkout.sha for checkout in checkouts} == {sha}
    assert len({checkout.directory for checkout in checkouts}) == 1
    assert [checkout.made for checkout in checkouts].count(True) == 1
    directory = checkouts[0].directory
    parent = str(Path(directory).parent)
    assert cluster.ssh(f"git -C {directory} rev-parse HEAD").strip() == sha
    assert cluster.ssh(f"git -C {directory} status --porcelain") == ""  # whole: nothing missing or changed
    assert cluster.ssh(f"ls -A {parent} | grep -c '^\\.{sha}' || true").strip() == "0"  # no temporary dirs left
    for _, key_files in results:  # every deploy key's temporary directory is gone
        assert cluster.ssh(f"test -e {key_files.directory} && echo left || echo gone").strip() == "gone"


def test_the_deploy_key_reaches_the_cluster_only_as_a_file_only_its_user_reads(
    host: git_host.GitHost, connections: None
) -> None:
    from airflow.sdk import BaseHook

    target = SshTarget.from_connection(BaseHook.get_connection("slurm_local"))
    key = DeployKey.from_connection(DEPLOY_CONN)
    assert key.private_key.strip() not in repr(key)

    async def upload() -> Any:
        transport = SshTransport(target)
        try:
            return await upload_key(transport, key)
        finally:
            await transport.close()

    files = asyncio.run(upload())
    try:
        modes = cluster.ssh(f"stat -c '%a %U' -- {files.directory} {files.directory}/key").splitlines()
        assert modes == [f"700 {cluster.USER}", f"600 {cluster.USER}"]
        uploaded = cluster.ssh(f"cat -- {files.directory}/key")
        assert uploaded == key.private_key
    finally:
        cluster.ssh(f"rm -rf -- {files.directory}")


def test_a_task_log_never_shows_the_deploy_key_and_a_wrong_host_key_stops_the_checkout(
    host: git_host.GitHost, connections: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    host.commit({"version.txt": "keys\n"}, "keys")
    capsys.readouterr()
    task = slurm_task(host, "keys", unique("keys"))
    task.execute({"ti": FakeTI("keys", unique("run"))})  # type: ignore[arg-type]
    log = capsys.readouterr()
    assert "Git: " in log.out  # the task's log was captured
    body = "".join(host.deploy_key.strip().splitlines()[1:-1])
    for line in host.deploy_key.strip().splitlines()[1:-1]:
        assert line not in log.out + log.err
    assert body[:40] not in (log.out + log.err).replace("\n", "")

    # The git host presents a key the deploy connection does not trust: ssh refuses, nothing runs.
    wrong = json.loads(host.connection_json())
    wrong["extra"]["host_key"] = cluster.connection_extra().get("host_key") or (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMM8L6vYbbZNQZRV20Ksx/Vb1+jSrF5XufCVOCvpt4AF"
    )
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEPLOY_CONN.upper()}", json.dumps(wrong))
    refused = slurm_task(host, "keys", unique("refused"))
    key_dirs = "ls -d ${TMPDIR:-/tmp}/airflow-hpc-git.* 2>/dev/null || true"
    before = cluster.ssh(key_dirs)
    with pytest.raises(RemoteCommandError, match="Host key verification failed"):
        refused.execute({"ti": FakeTI("keys", unique("run"))})  # type: ignore[arg-type]
    assert cluster.ssh(key_dirs) == before  # the key's directory went with the failed checkout


def test_the_example_dag_runs_both_map_indexes_on_one_commit_checked_out_once(
    host: git_host.GitHost, run_dag: Any
) -> None:
    sha = host.commit({"analysis/run.sh": 'echo "analysed part $1"\n'}, "analysis")
    try:
        result = run_dag(
            "git_pinned",
            dags_folder=EXAMPLE_DAGS,
            env={"AIRFLOW_HPC_EXAMPLE_GIT_REPO": host.url, "AIRFLOW_CONN_GIT_DEPLOY_KEY": host.connection_json()},
        )
    finally:  # the example uses the connection's default log_dir: leave no checkout there
        cluster.ssh(f"rm -rf -- .airflow-hpc/logs/{checkouts_of(host)}")
    assert result.succeeded, result.output[-5000:]
    for part in ("a", "b"):
        assert result.output.count(f"part {part} runs commit {sha} in ") == 1
        assert result.output.count(f"analysed part {part}") == 1
    assert result.output.count(f"is commit {sha} (resolved now") == 1
    assert result.output.count(f"is commit {sha} (pinned when an earlier try or map index") == 1
    assert result.output.count(f"/{checkouts_of(host)}/{sha} (made now)") == 1
    assert f"/{checkouts_of(host)}/{sha}/analysis" in result.output
    # Under `airflow dags test` the mapped instances are jobs of their own, submitted at once
    # (one trigger runs to its end before the next instance starts: an array would hold one).
    assert result.output.count("not an array element: `airflow dags test` runs the task instances one at a time") == 2
    assert "Submitted as Slurm array job" not in result.output


def test_a_tenant_runs_in_its_pinned_commits_checkout_with_a_relative_working_dir_inside_it(
    host: git_host.GitHost, slurm_connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEPLOY_CONN.upper()}", host.connection_json())
    sha = host.commit({"version.txt": "tenant\n", "tools/run/.keep": ""}, "tenant")
    reservation = unique("it-git-tenant")
    result = unique("tenant")
    asyncio.run(book(reservation))
    try:
        task = SlurmTenantOperator(
            task_id="tenant",
            reservation=reservation,
            slurm_conn_id=slurm_connection,
            command=REPORT,
            env={"GIT_TEST_RESULT": f"{HOME}/{result}", "GIT_TEST_GO": ""},
            git=git_arguments(host, path="tools"),
            working_dir="run",
            deferrable=False,
            poll_interval=0.5,
        )
        ti = FakeTI("tenant", unique("run"))
        task.execute({"ti": ti})  # type: ignore[arg-type]
    finally:
        asyncio.run(release(reservation))
        cluster.ssh(f"rm -rf -- {DEFAULT_LOG_DIR}/{checkouts_of(host)}")
    assert ti.xcom[GIT_SHA_XCOM_KEY] == sha
    version, head, directory = ran(f"{HOME}/{result}")
    assert (version, head) == ("tenant", sha)
    assert directory.endswith(f"/{checkouts_of(host)}/{sha}/tools/run")


def test_a_checkout_that_fails_leaves_neither_a_directory_nor_a_temporary_one_and_says_why(
    host: git_host.GitHost, connections: None, log_dir: str
) -> None:
    from airflow.sdk import BaseHook

    host.commit({"version.txt": "exists\n"}, "exists")
    missing = "0123456789abcdef0123456789abcdef01234567"  # a commit the repository does not have
    source = GitSource.parse(git_arguments(host, ref=missing), "t")
    assert source is not None
    target = SshTarget.from_connection(BaseHook.get_connection("slurm_local"))
    place = CheckoutPlace(log_dir=log_dir, pin_digest=source.pin_digest("fails", unique("run"), "t"))

    async def attempt() -> Any:
        transport = SshTransport(target)
        try:
            return await check_out(transport, source, place, DeployKey.from_connection(DEPLOY_CONN))
        finally:
            await transport.close()

    with pytest.raises(RemoteCommandError, match=f"cannot check out commit {missing}"):
        asyncio.run(attempt())
    left = cluster.ssh(f"ls -A {log_dir}/{checkouts_of(host)} 2>/dev/null | grep -- {missing} || true")
    assert left.split() in ([], [f"{missing}.lock"]), left  # the lock file only: no checkout, whole or half
