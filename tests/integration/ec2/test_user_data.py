"""The boot script, executed for real: bash in a scratch directory, with stand-in docker and poweroff."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import ec2, ec2_boot
from airflow_hpc_provider.jobs import JobState
from tests.integration.ec2.fake_ec2 import SSH_DIR, StandIns, kill_session, remove_scratch, scratch_dir

SECRET = "s3cr3t-$(touch /tmp/pwned)-'quoted'"


@pytest.fixture
def box() -> StandIns:
    root = scratch_dir()
    yield StandIns.create(root)  # type: ignore[misc]
    remove_scratch(root)


def boot(box: StandIns, *, limit_s: int = 30, startup_s: int = 30, slack_s: int = 60, image: str = "repo/img:1"):
    run_dir = str(box.root / "run")
    user_data = ec2_boot.render_user_data(
        ec2_boot.RunnerSpec(
            image=image,
            run_dir=run_dir,
            os_user="root",
            time_limit_s=limit_s,
            kill_after_s=1,
            startup_timeout_s=startup_s,
            idle_slack_s=slack_s,
            tick_s=0.2,
        )
    )
    (box.root / "user-data").write_text(user_data)
    env = {
        **os.environ,
        "PATH": box.path_with_stand_ins(),
        "AIRFLOW_HPC_CONSOLE": str(box.root / "console"),
        "AIRFLOW_HPC_HOST_KEY_DIR": str(SSH_DIR),
        "AIRFLOW_HPC_TEST_INSTANCE": "i-test",
    }
    process = subprocess.Popen(["bash", str(box.root / "user-data")], env=env, start_new_session=True)
    return Path(run_dir), process, user_data


def deliver(run_dir: Path, script: str, env: dict[str, str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "payload").is_dir():
        assert time.monotonic() < deadline, f"the boot script made no {run_dir / 'payload'} in {timeout_s} s"
        time.sleep(0.05)
    done = subprocess.run(
        ["sh", "-s"], input=ec2.render_payload(str(run_dir), script, env), text=True, capture_output=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "delivered", done.stderr


def wait_for(path: Path, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def wait_for_text(path: Path, text: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text().strip() == text):
        assert time.monotonic() < deadline, f"{path} never said {text!r}"
        time.sleep(0.05)


def processes_running(argument: str) -> list[int]:
    """Processes whose command line has ``argument`` (the container's shell running our script)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argument.encode() in argv:
                found.append(int(entry.name))
    return found


def test_a_successful_container_leaves_its_log_and_exit_code_zero(box: StandIns) -> None:
    run_dir, process, user_data = boot(box)
    deliver(run_dir, 'echo "hello $GREETING"\necho to-stderr >&2\n', {"GREETING": SECRET})
    assert wait_for(run_dir / "exit_code").strip() == "0"
    log = (run_dir / "job.log").read_text()
    assert f"hello {SECRET}" in log and "to-stderr" in log and "pulled repo/img:1" in log
    # The exit code is the runner's last word on the job; the phase follows it a moment later.
    wait_for_text(run_dir / "phase", "done")
    assert not (run_dir / "payload" / "env.sh").exists()  # values removed once the container ended
    assert not Path("/tmp/pwned").exists()
    # The secret is in no command line and not in the boot script.
    assert SECRET not in user_data and SECRET not in (box.state / "docker-calls.log").read_text()
    assert "-e GREETING" in (box.state / "docker-calls.log").read_text()
    assert "AIRFLOW_HPC_HOST_KEY ssh-ed25519" in (box.root / "console").read_text()
    kill_session(process)


def test_a_failing_container_reports_its_exit_code(box: StandIns) -> None:
    run_dir, process, _ = boot(box)
    deliver(run_dir, "echo failing\nexit 3\n", {})
    assert wait_for(run_dir / "exit_code").strip() == "3"
    kill_session(process)


def test_a_runaway_container_is_killed_at_the_time_limit(box: StandIns) -> None:
    run_dir, process, _ = boot(box, limit_s=1)
    started = time.monotonic()
    deliver(run_dir, "trap '' TERM\necho started\nsleep 30\n", {})
    assert int(wait_for(run_dir / "exit_code")) in ec2.TIMEOUT_EXIT_CODES
    assert time.monotonic() - started < 10
    assert "time limit of 1s reached" in (run_dir / "job.log").read_text()
    assert (run_dir / "time_limit_reached").exists()
    assert any(
        line.startswith("rm -f airflow-hpc-task") for line in (box.state / "docker-calls.log").read_text().splitlines()
    )
    kill_session(process)


def test_a_container_killed_before_its_time_limit_is_not_reported_as_the_time_limit(box: StandIns) -> None:
    run_dir, process, _ = boot(box, limit_s=60)
    deliver(run_dir, "echo started\nsleep 30\n", {})
    script = str(run_dir / "payload" / "script.sh")
    deadline = time.monotonic() + 20
    while not (victims := [pid for pid in processes_running(script)]):
        assert time.monotonic() < deadline, "the container never started"
        time.sleep(0.1)
    for pid in victims:  # what a `docker kill` does: every process of the container at once
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    code = int(wait_for(run_dir / "exit_code"))
    assert code == 137 and not (run_dir / "time_limit_reached").exists()
    assert "killed (exit 137) before the time limit" in (run_dir / "job.log").read_text()
    dialect = ec2.Ec2RunnerDialect(str(run_dir))
    probe = subprocess.run(["sh", "-c", dialect.poll_script("T", ["i-test"], [])], capture_output=True, text=True)
    assert "exit 137" in probe.stdout and "limit" not in probe.stdout
    status = dialect.read_poll({"runner": (0, "exit 137")}, ["i-test"]).observations["i-test"].status
    assert status is not None and status.state is JobState.FAILED
    kill_session(process)


def test_the_probe_tells_a_dead_runner_from_a_live_one(box: StandIns) -> None:
    run_dir, process, _ = boot(box, limit_s=60)
    deliver(run_dir, "echo started\nsleep 30\n", {})
    wait_for_text(run_dir / "phase", "running")
    dialect = ec2.Ec2RunnerDialect(str(run_dir))

    def probe() -> str:
        script = dialect.poll_script("T", ["i-test"], [])
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout

    assert "phase running" in probe()
    kill_session(process)  # the runner and everything it started, at once
    assert "gone running" in probe()
    assert not (run_dir / "exit_code").exists()


def test_an_image_that_cannot_be_pulled_ends_with_the_runner_code(box: StandIns) -> None:
    run_dir, process, _ = boot(box, image="missing/image:1")
    deliver(run_dir, "echo never\n", {})
    assert int(wait_for(run_dir / "exit_code")) == ec2.RUNNER_FAILED_EXIT
    assert "could not pull missing/image:1" in (run_dir / "job.log").read_text()
    kill_session(process)


def test_the_safety_timer_powers_off_when_no_task_ever_arrives(box: StandIns) -> None:
    run_dir, process, _ = boot(box, startup_s=1, limit_s=1, slack_s=1)
    assert int(wait_for(run_dir / "exit_code")) == ec2.RUNNER_FAILED_EXIT
    deadline = time.monotonic() + 15
    while "i-test" not in box.poweroffs():
        assert time.monotonic() < deadline, "the safety timer never powered off"
        time.sleep(0.1)
    assert "no task arrived" in (run_dir / "job.log").read_text()
    kill_session(process)


def test_the_safety_timer_powers_off_an_idle_slack_after_the_task_ended(box: StandIns) -> None:
    run_dir, process, _ = boot(box, slack_s=2)
    deliver(run_dir, "echo quick\n", {})
    wait_for(run_dir / "exit_code")
    ended = time.monotonic()
    while "i-test" not in box.poweroffs():
        assert time.monotonic() - ended < 15
        time.sleep(0.1)
    assert time.monotonic() - ended >= 1
    assert "safety timer: powering off" in (run_dir / "job.log").read_text()
    kill_session(process)
