"""The tenant dialect's pure parts: scripts quote every value, answers are read strictly."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from airflow_hpc_provider.dialects import slurm_allocation, slurm_tenant
from airflow_hpc_provider.dialects.slurm_allocation import AllocationSpec
from airflow_hpc_provider.dialects.slurm_tenant import TenantRef, TenantSpec
from airflow_hpc_provider.dialects.slurm_tenant_poll import SlurmTenantDialect, observe_tenant
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, Resources

KEY = JobKey.for_task_instance("dag", "task", "run", -1, 2)
NASTY = 'it\'s "quoted" $(touch /tmp/x) `y`; z\nline two\n'


def shell_syntax_ok(script: str) -> None:
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["", "-x", "a b", "a;b", "$(x)", "a/b", "x" * 101, "é", None, 3])
def test_a_reservation_name_a_shell_or_a_path_could_misread_is_refused(name: object) -> None:
    with pytest.raises(JobSpecError, match="reservation"):
        slurm_allocation.check_reservation(name)


def test_a_launch_script_carries_env_values_and_commands_only_inside_quoted_heredocs() -> None:
    spec = TenantSpec(command=f"echo {NASTY!r}", env={"NASTY": NASTY}, working_dir="/tmp/a b", cpus=2, memory_mb=300)
    script = slurm_tenant.launch_script("pool-1", spec, key=KEY, log_dir="logs dir/x")
    shell_syntax_ok(script)
    # Values appear only in heredoc bodies (whose delimiters are quoted) or shlex-quoted.
    assert "export NASTY='it'\"'\"'s" in script
    assert 'srun --jobid="$_j" --overlap' in script
    assert "'logs dir/x/tenants'" in script


def test_the_wrapper_writes_the_exit_status_atomically_and_runs_a_stepped_command_with_its_cpus() -> None:
    wrapper = slurm_tenant.render_wrapper(TenantSpec(command="true", cpus=2, memory_mb=300))
    shell_syntax_ok(wrapper)
    assert 'mv -f -- "$_here/exit.tmp" "$_here/exit"' in wrapper
    assert "--cpus-per-task=2" in wrapper and "_mem=300\n" in wrapper and "--overlap" not in wrapper


def test_a_wrapper_run_for_real_records_exit_code_and_log(tmp_path) -> None:
    directory = tmp_path / "t"
    directory.mkdir()
    (directory / "command.sh").write_text(slurm_tenant.render_command(TenantSpec(command='echo "$GREETING"; exit 7')))
    (directory / "run.sh").write_text(slurm_tenant.render_wrapper(TenantSpec(command="unused")))
    (directory / "env").write_text("export GREETING='hi $(no)'\n")
    subprocess.run(["bash", str(directory / "run.sh")], check=True)
    assert (directory / "log").read_text() == "hi $(no)\n"
    assert (directory / "exit").read_text() == "7 exited\n"
    assert not (directory / "exit.tmp").exists()


def test_an_allocation_script_execs_the_tmux_server_unless_it_must_trap_usr1_to_resubmit() -> None:
    job = JobSpec(command="", job_name="pool", resources=Resources(cpus=1, time_limit=timedelta(minutes=5)))
    plain = slurm_allocation.render_allocation_script(AllocationSpec("pool", job), log_dir=".airflow-hpc/logs")
    shell_syntax_ok(plain)
    assert plain.rstrip().endswith('exec tmux -L "airflow-hpc-$SLURM_JOB_ID" -f /dev/null -D')
    persistent = slurm_allocation.render_allocation_script(
        AllocationSpec("pool", job, persistent_lead_s=90), log_dir=".airflow-hpc/logs"
    )
    shell_syntax_ok(persistent)
    assert "#SBATCH --signal=B:USR1@90" in persistent and "trap _resubmit USR1" in persistent
    assert "--comment=airflow-hpc-allocation:v1" in persistent


def test_release_cancels_only_jobs_carrying_the_allocation_tag() -> None:
    script = slurm_allocation.release_script("pool")
    shell_syntax_ok(script)
    released = slurm_allocation.parse_release_output("RELEASED 12\nRELEASED 14\nFOREIGN 13\n")
    assert released.job_ids == ("12", "14") and released.foreign == ("13",)


def test_launch_answers_are_read_and_anything_else_is_an_error() -> None:
    assert slurm_tenant.parse_launch_output("STARTED 12 2\n").try_number == 2
    assert slurm_tenant.parse_launch_output("ADOPTED 12 1\n").word is slurm_tenant.LaunchWord.ADOPTED
    assert slurm_tenant.parse_launch_output("srun: warning\nNOALLOC\n").word is slurm_tenant.LaunchWord.NOALLOC
    noserver = slurm_tenant.parse_launch_output("NOSERVER 12 no server running on /tmp/tmux-1/x\n")
    assert noserver.allocation_id == "12" and "no server" in noserver.detail
    with pytest.raises(ValueError):
        slurm_tenant.parse_launch_output("STARTED 12 \n")
    with pytest.raises(ValueError):
        slurm_tenant.parse_launch_output("srun: error\n")


TENANT = slurm_tenant.tenant_id("12", KEY, 2)
REF = TenantRef.parse(TENANT)


def test_a_sentinel_decides_and_a_missing_one_never_means_success() -> None:
    done = observe_tenant(REF, TENANT, "0 exited", ("RUNNING", "None"))
    assert done.final and done.status is not None and done.status.state is JobState.COMPLETED
    failed = observe_tenant(REF, TENANT, "3 exited", ("RUNNING", "None"))
    assert failed.status is not None and (failed.status.state, failed.status.exit_code) == (JobState.FAILED, 3)
    stopped = observe_tenant(REF, TENANT, "143 stopped", ("RUNNING", "None"))
    assert stopped.status is not None and stopped.status.state is JobState.CANCELLED and stopped.status.signal == 15
    running = observe_tenant(REF, TENANT, None, ("RUNNING", "None"))
    assert not running.final and running.status is not None and running.status.state is JobState.RUNNING


@pytest.mark.parametrize(
    ("native", "state"),
    [
        ("TIMEOUT", JobState.TIMEOUT),
        ("CANCELLED", JobState.CANCELLED),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("COMPLETED", JobState.FAILED),
    ],
)
def test_an_allocation_that_ended_under_a_tenant_fails_it_with_that_reason(native: str, state: JobState) -> None:
    seen = observe_tenant(REF, TENANT, None, (native, "None"))
    assert seen.final and seen.status is not None and seen.status.state is state
    assert seen.status.reason == f"allocation 12 ended {native} while the tenant ran"


def test_a_poll_reads_every_allocation_once_and_every_sentinel() -> None:
    other = slurm_tenant.tenant_id("13", KEY, 1)
    dialect = SlurmTenantDialect(".airflow-hpc/logs")
    script = dialect.poll_script("T", [TENANT, other], [])
    shell_syntax_ok(script)
    assert script.count("squeue -h") == 1 and "-j 12,13" in script
    report = dialect.read_poll(
        {"squeue": (0, "12|RUNNING|None|\n13|TIMEOUT|TimeLimit|"), "sentinels": (0, f"{TENANT}|\n{other}|")},
        [TENANT, other],
    )
    assert report.observations[TENANT].status.state is JobState.RUNNING  # type: ignore[union-attr]
    assert report.observations[other].status.state is JobState.TIMEOUT  # type: ignore[union-attr]
    failed = dialect.read_poll({"squeue": (1, "slurm_load_jobs error: Unable to contact")}, [TENANT])
    assert failed.failure is not None and not failed.observations


def test_stop_script_signals_the_sessions_process_group_in_posix_form() -> None:
    script = slurm_tenant.stop_script([TENANT])
    shell_syntax_ok(script)
    assert 'kill -TERM "-$_x"' in script and "kill -TERM --" not in script
    assert "tmux -L airflow-hpc-12 list-panes -t =airflow-" in script
