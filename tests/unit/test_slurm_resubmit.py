"""``signal_before_timeout`` / ``on_signal`` / ``resubmit_on_timeout``: checked at parse time, rendered
into a script bash accepts (the behaviour on a cluster: tests/integration/test_slurm_resubmit.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.dialects.slurm_resubmit import CUT_SHORT_EXIT_CODE, SignalBeforeTimeout
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobSpec, Resources
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resubmit_on_timeout": 2}, "need signal_before_timeout"),
        ({"on_signal": ["touch ck"]}, "need signal_before_timeout"),
        ({"signal_before_timeout": "KILL@60"}, "one of USR1"),
        ({"signal_before_timeout": "USR1"}, "'<signal>@<seconds>'"),
        ({"signal_before_timeout": "USR1@0"}, "seconds from 1"),
        ({"signal_before_timeout": "USR1@60", "resubmit_on_timeout": -1}, "resubmit_on_timeout=-1"),
        ({"signal_before_timeout": "USR1@60", "on_signal": ["a\nb"]}, "one line"),
    ],
)
def test_a_wrong_near_limit_argument_fails_when_the_dag_is_parsed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        SlurmSubmitOperator(task_id="t", command="true", time_limit=2, **kwargs)  # type: ignore[arg-type]


def test_resubmitting_without_a_time_limit_is_refused_once_rendered() -> None:
    operator = SlurmSubmitOperator(task_id="t", command="true", signal_before_timeout="USR1@60", resubmit_on_timeout=1)
    with pytest.raises(JobSpecError, match="needs a time_limit"):
        operator.near_limit()


@pytest.mark.parametrize("script", [None, "#!/bin/bash\n#SBATCH --mem=1G\nset -e\npython train.py\n"])
def test_the_rendered_script_asks_for_the_signal_and_requeue_and_is_valid_bash(script: str | None) -> None:
    near_limit = SignalBeforeTimeout.parse("sigusr1@300", resubmits=3, on_signal=["touch 'ck point'"])
    spec = JobSpec(command="python train.py", job_name="j", resources=Resources(time_limit=timedelta(minutes=30)))
    rendered = slurm.render_script(spec, script=script, near_limit=near_limit)
    assert "#SBATCH --signal=B:USR1@300\n" in rendered and "#SBATCH --requeue\n" in rendered
    assert "  touch 'ck point'\n" in rendered and "-le 3 ]" in rendered
    # The user's command runs in the background child the trap signals, after the directives.
    assert rendered.index("(\n") < rendered.index("python train.py") < rendered.index(") &\n")
    if script:  # the user's own directives stay in the header, before the trap
        assert rendered.index("#SBATCH --mem=1G") < rendered.index("trap _airflow_hpc_near_limit USR1")
    subprocess.run(["bash", "-n"], input=rendered, text=True, check=True)


def test_a_signal_without_resubmission_does_not_ask_slurm_to_requeue() -> None:
    near_limit = SignalBeforeTimeout.parse("TERM@120", resubmits=0, on_signal=())
    assert near_limit.directives() == ["--signal=B:TERM@120"]
    assert "-le 0 ]" in near_limit.wrap("sleep 1")


def test_a_run_the_signal_cut_short_with_no_run_to_follow_never_exits_zero(tmp_path: Path) -> None:
    """The command checkpoints on the signal and exits 0; the job must still not look successful."""
    near_limit = SignalBeforeTimeout.parse("USR1@60", resubmits=0, on_signal=())
    started = tmp_path / "started"
    body = f"trap 'exit 0' USR1; touch {started}; while :; do sleep 0.1; done"
    job = subprocess.Popen(["bash", "-c", near_limit.wrap(body)], stdout=subprocess.PIPE, text=True)
    while not started.exists():
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=30)
    assert job.returncode == CUT_SHORT_EXIT_CODE, out
    assert "--- time limit near: USR1 in run 1 of job" in out and "no run follows: exit 124" in out


def test_the_operator_renders_its_near_limit_arguments_into_the_batch_script() -> None:
    operator = SlurmSubmitOperator(
        task_id="t", command="python train.py", time_limit=30, signal_before_timeout="USR2@90", resubmit_on_timeout=1
    )
    spec = JobSpec(command="python train.py", job_name="j", resources=Resources(time_limit=timedelta(minutes=30)))
    rendered = operator.render(spec, cluster=None)  # type: ignore[arg-type]
    assert "#SBATCH --signal=B:USR2@90\n" in rendered and "#SBATCH --requeue\n" in rendered
    assert "trap _airflow_hpc_near_limit USR2" in rendered
