"""A job array never passes for a success: refused when the DAG is parsed, in every way a scheduler
would read one (options, script directives, environment), and failed if one got through anyway.

The spellings come from sbatch and the Torque wrappers on the test cluster (see
``airflow_hpc_provider/dialects/directives.py`` for what was checked there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_exits, pbs_qstat, slurm, slurm_status
from airflow_hpc_provider.dialects.pbs_exits import RecordedExit, with_recorded_exit
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobSpec, JobState, JobStatus
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.operators.slurm_tenant import SlurmTenantOperator

FIXTURES = Path(__file__).parents[1] / "fixtures"
ARRAY_WORDS = "asks for a job array"


def slurm_op(**kwargs: object) -> SlurmSubmitOperator:
    return SlurmSubmitOperator(task_id="t", **{"command": "true", **kwargs})  # type: ignore[arg-type]


def pbs_op(**kwargs: object) -> PbsOperator:
    return PbsOperator(task_id="t", **{"command": "true", **kwargs})  # type: ignore[arg-type]


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        "--array=1-3",
        "--array 1-3",
        "-a 1-3",
        "-a1-3",
        "--arr=1-3",  # sbatch takes any unambiguous abbreviation
        "-Ha1-3",  # clustered after a flag: --hold --array=1-3
        "--qos=high --array=1-3",  # one directive line, two options
        "--qos=high '--array=1-3'",
    ],
)
def test_an_array_in_slurm_extra_options_is_refused_at_parse_time(option: str) -> None:
    with pytest.raises(JobSpecError, match=ARRAY_WORDS) as refused:
        slurm_op(extra_options=[option])
    assert "would follow one element" in str(refused.value) and ".expand()" in str(refused.value)


@pytest.mark.parametrize("option", ["--qos=high", "-N 2", "--hold", "-J name", "--constraint=avx2", "--mem=4G"])
def test_ordinary_slurm_options_pass(option: str) -> None:
    assert slurm_op(extra_options=[option]).extra_options == (option,)


@pytest.mark.parametrize("option", ["--out=/tmp/x", "--qos=high --output=/tmp/x", "-Ho /tmp/x", "--comm=x"])
def test_options_the_operator_sets_are_refused_in_any_spelling(option: str) -> None:
    with pytest.raises(JobSpecError, match="is set by the operator"):
        slurm_op(extra_options=[option])


@pytest.mark.parametrize("directive", ["-J 1-3", "-t 1-3", "-t1-3", "-ht 1-3", "-l walltime=1:00:00 -t 1-3"])
def test_an_array_in_pbs_extra_directives_is_refused_at_parse_time(directive: str) -> None:
    with pytest.raises(JobSpecError, match=ARRAY_WORDS):
        pbs_op(extra_directives=[directive])


@pytest.mark.parametrize("directive", ["-l place=scatter", "-m n", "-W depend=afterok:12", "-l nodes=1:ppn=2"])
def test_ordinary_pbs_directives_pass(directive: str) -> None:
    assert pbs_op(extra_directives=[directive]).extra_options == (directive,)


# --- script directives -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        "#!/bin/bash\n#SBATCH --array=1-3\nsrun hostname\n",
        "#!/bin/bash\n#SBATCH -N 1 -a 1-3\nsrun hostname\n",
        "#!/bin/bash\n#SBATCH--array=1-3\nsrun hostname\n",
        "#!/bin/bash\n\n  # a comment with blanks before it\n#SBATCH --array=1-3\nsrun hostname\n",
        "#!/bin/bash\n#SLURM --array=1-3\nsrun hostname\n",
        # sbatch reads #PBS lines too, anywhere in the script: -t and -J make arrays there.
        "#!/bin/bash\n#PBS -t 1-3\nsrun hostname\n",
        "#!/bin/bash\nsrun hostname\n#PBS -J 1-3\n",
        "#!/bin/bash\n#SBATCH -n 1\n#SBATCH hetjob\n#SBATCH -n 2\nsrun hostname\n",
    ],
)
def test_an_array_directive_in_a_literal_slurm_script_is_refused_at_parse_time(script: str) -> None:
    with pytest.raises(JobSpecError, match="job array or a heterogeneous job") as refused:
        SlurmSubmitOperator(task_id="t", script=script)
    assert "script=" in str(refused.value)


@pytest.mark.parametrize(
    "script",
    [
        "#!/bin/bash\nsrun hostname\n#SBATCH --array=1-3\n",  # after the first command: sbatch ignores it
        "#!/bin/bash\n  #SBATCH --array=1-3\nsrun hostname\n",  # blanks before it: a comment
        "#!/bin/bash\n# SBATCH --array=1-3\nsrun hostname\n",
        "#!/bin/bash\n#SBATCH -N 1 # --array=1-3 is commented out\nsrun hostname\n",
    ],
)
def test_lines_sbatch_does_not_read_as_directives_pass(script: str) -> None:
    SlurmSubmitOperator(task_id="t", script=script)


def test_an_array_directive_at_the_top_of_a_command_is_refused_too() -> None:
    # The command follows our own directive lines, so its first #SBATCH lines are still the header.
    with pytest.raises(JobSpecError, match="job array"):
        slurm_op(command="#SBATCH --array=1-3\nsrun hostname")


def test_an_array_directive_in_a_pbs_script_is_refused_in_either_flavours_spelling() -> None:
    for line in ("#PBS -J 1-3", "#PBS -t 1-3", "#SBATCH --array=1-3"):  # the last: the wrappers' sbatch
        with pytest.raises(JobSpecError, match="job array"):
            PbsOperator(task_id="t", script=f"#!/bin/bash\n{line}\nhostname\n")


def test_a_templated_directive_is_refused_when_it_can_be_read_and_checked_again_once_rendered() -> None:
    with pytest.raises(JobSpecError, match="job array"):  # the option is literal: at parse time
        SlurmSubmitOperator(task_id="t", script="#!/bin/bash\n#SBATCH --array={{ params.n }}\nhostname\n")
    # Only rendering says what this line holds: it passes the parse, and fails before submission.
    op = SlurmSubmitOperator(
        task_id="t",
        script="#!/bin/bash\n{% if params.many %}\n#SBATCH {{ params.option }}\n{% endif %}\nhostname\n",
    )
    op.render_template_fields({"params": {"many": True, "option": "--array=1-3"}})  # type: ignore[arg-type]
    with pytest.raises(JobSpecError, match="the batch script: the directive '#SBATCH --array=1-3'"):
        op.render(JobSpec(command="", job_name="t"), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["--array=1-3", "-a 1-3", "--arr=1-3", "--qos=high -a1-3"])
def test_an_allocation_for_tenants_is_never_an_array(option: str) -> None:
    from airflow_hpc_provider.operators.slurm_tenant import SlurmAllocationOperator

    with pytest.raises(JobSpecError, match=ARRAY_WORDS):
        SlurmAllocationOperator(task_id="t", reservation="pool", extra_options=[option])


def test_a_dag_with_an_array_option_fails_to_import_with_the_reason(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag_file = tmp_path / "array_dag.py"
    dag_file.write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator\n"
        "with DAG('arrays', schedule=None, start_date=datetime(2026, 1, 1)):\n"
        "    SlurmSubmitOperator(task_id='t', command='true', extra_options=['--array=1-3'])\n"
    )
    bag = DagBag(dag_folder=str(dag_file))
    assert "arrays" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "'--array=1-3' asks for a job array (--array)" in error


# --- the environment -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("SBATCH_ARRAY_INX", "SBATCH_ARRAY_INX makes a job array"),
        ("SBATCH_EXPORT", "sbatch reads SBATCH_* variables as its own options"),
        ("SLURM_CONF", "SLURM_CONF picks another cluster"),
        ("PATH", "which sbatch, qsub or srun"),
        ("HOME", "under $HOME"),
        ("BASH_ENV", "would run the file it names"),
        ("LD_PRELOAD", "the libraries"),
        ("AIRFLOW_HPC_KEY", "the provider's own"),
    ],
)
def test_env_names_the_slurm_submission_would_read_are_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(JobSpecError) as refused:
        slurm_op(env={name: "x"})
    assert f"env name {name!r} is refused" in str(refused.value) and why in str(refused.value)


@pytest.mark.parametrize("name", ["PBS_DPREFIX", "PBS_DEFAULT", "SBATCH_ARRAY_INX", "PERL5OPT", "PATH"])
def test_env_names_the_pbs_submission_would_read_are_refused(name: str) -> None:
    with pytest.raises(JobSpecError, match=f"env name '{name}' is refused"):
        pbs_op(env={name: "x"})


@pytest.mark.parametrize("name", ["SLURM_MEM_PER_NODE", "SRUN_CPUS_PER_TASK", "SLURM_JOB_ID", "PATH"])
def test_env_names_a_tenants_step_would_read_are_refused(name: str) -> None:
    with pytest.raises(JobSpecError, match=f"env name '{name}' is refused"):
        SlurmTenantOperator(task_id="t", reservation="pool", command="true", cpus=1, env={name: "x"})


def test_ordinary_env_names_pass_everywhere() -> None:
    env = {"OMP_NUM_THREADS": "4", "DATA_URL": "s3://x", "SLURMISH": "1", "MY_PATH": "/x", "PBSX": "1"}
    assert slurm_op(env=env).env == env
    assert pbs_op(env=env).env == env
    assert SlurmTenantOperator(task_id="t", reservation="pool", command="true", env=env).env == env


def test_env_names_are_checked_again_before_submission() -> None:
    op = slurm_op()
    op.env = {"SBATCH_ARRAY_INX": "1-3"}  # as if set after parsing
    with pytest.raises(JobSpecError, match="SBATCH_ARRAY_INX"):
        op.render(JobSpec(command="true", job_name="t"), None)  # type: ignore[arg-type]


# --- an array that got through anyway --------------------------------------------------------------


def slurm_poll(fixture: str, job_ids: list[str]) -> dict:
    text = (FIXTURES / "slurm" / fixture).read_text()
    report = slurm.SlurmDialect().read_poll({"squeue": (0, text)}, job_ids)
    assert report.failure is None
    return dict(report.observations)


def test_a_running_slurm_array_fails_at_once_naming_its_elements_not_on_one_elements_word() -> None:
    # Element 3 has the array's own raw id (284): watched alone, its end was the task's.
    seen = slurm_poll("squeue_array_running.txt", ["284"])["284"]
    assert seen.final and seen.status is not None
    assert seen.status.state is JobState.FAILED and slurm_status.is_multi_job(seen.status)
    assert "Slurm job 284 is 284_1 RUNNING, 284_2 RUNNING, 284_3 RUNNING" in str(seen.status.reason)


def test_an_element_watched_by_its_own_raw_id_fails_too() -> None:
    # A retry's adoption search sees squeue's raw ids: element 1 of array 284 is job 285.
    seen = slurm_poll("squeue_array_running.txt", ["285"])["285"]
    assert seen.final and seen.status is not None and slurm_status.is_multi_job(seen.status)
    assert "Slurm job 285 is 284_1 RUNNING" in str(seen.status.reason)


def test_a_pending_slurm_array_fails_at_once_too() -> None:
    seen = slurm_poll("squeue_array_pending.txt", ["288"])["288"]
    assert seen.final and seen.status is not None and slurm_status.is_multi_job(seen.status)
    assert "288_[1-3] PENDING" in str(seen.status.reason)


def test_single_jobs_beside_an_array_are_read_as_before() -> None:
    text = (FIXTURES / "slurm" / "squeue_array_running.txt").read_text()
    text += (FIXTURES / "slurm" / "squeue_pending_and_running.txt").read_text()  # recorded before JobArrayID
    report = slurm.SlurmDialect().read_poll({"squeue": (0, text)}, ["284", "2", "5"])
    assert report.observations["2"].status is not None
    assert report.observations["2"].status.state is JobState.RUNNING and not report.observations["2"].final
    assert report.observations["5"].status is not None
    assert report.observations["5"].status.state is JobState.PENDING
    assert report.observations["284"].final


def test_a_pbs_array_element_whose_script_refused_to_run_fails_saying_why() -> None:
    finished = JobStatus(job_id="70", state=JobState.FAILED, native_state="C", reason="no exit status")
    status = with_recorded_exit(finished, RecordedExit.parse("array"))
    assert status.state is JobState.FAILED and pbs_exits.is_array_element(status)
    assert "element of a job array" in str(status.reason)
    assert pbs_exits.parse_exits("70 array\n71 3\n")["70"].array_element


def test_the_pbs_script_refuses_to_run_as_an_array_element() -> None:
    script = pbs.render_script(JobSpec(command="echo ran", job_name="t"), pbs_qstat.PbsFlavour.TORQUE, exit_dir="x")
    assert '"${PBS_ARRAYID:-}${PBS_ARRAY_INDEX:-}${SLURM_ARRAY_TASK_ID:-}"' in script
    assert script.index("_airflow_hpc_exit array") < script.index("echo ran")
