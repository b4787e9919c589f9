"""Python functions as Slurm jobs through ``@task.slurm`` (and one each through ``@task.pbs`` and
``@task.sge``): the DAGs ``test_python_tasks.py`` runs.

``py_outcomes`` holds one independent task per outcome, so that one ``airflow dags test`` runs them
all (its output is cut per task by the runner's start and end lines); ``earlier_try_left_a_job``
plays a worker that crashed with its job running, before the task ``job`` runs.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, Resources
from airflow_hpc_provider.python_task import cluster_files
from airflow_hpc_provider.python_task.codec import encode_body
from airflow_hpc_provider.python_task.launch import cluster_command
from airflow_hpc_provider.python_task.manifest import FileResultTarget, InlineBody, PayloadManifest
from airflow_hpc_provider.python_task.serializer import serialize_call

# The job's environment holds no Airflow: PATH has only the system's directories, PYTHONPATH is unset.
NO_AIRFLOW = ["export PATH=/usr/bin:/bin", "unset PYTHONPATH VIRTUAL_ENV"]
# What `module load python/3.12` would do to the job's python3, for a cluster that has only 3.11.
PYTHON_312 = ["python3() { /usr/bin/python3 -c 'import sys; sys.version_info = (3, 12, 1); exec(sys.stdin.read())'; }"]
SLURM = {"slurm_conn_id": "slurm_local", "poll_interval": 1, "time_limit": timedelta(minutes=5)}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"])


def check_input(value: int) -> int:
    if value > 10:
        raise ValueError(f"bad input {value}: at most 10")
    return value


def square_slowly(x: int) -> dict[str, Any]:
    import os
    import time

    print(f"squaring {x} in Slurm job {os.environ['SLURM_JOB_ID']}")
    time.sleep(5)
    return {"square": x * x, "job": os.environ["SLURM_JOB_ID"]}


with _dag("py_outcomes"):
    # Watched on the worker (deferrable=False): the value comes back through the same path.
    @task.slurm(multiple_outputs=True, setup=NO_AIRFLOW, deferrable=False, **SLURM)
    def describe(a: int, b: int) -> dict[str, Any]:
        import importlib.util
        import sys

        return {
            "sum": a + b,
            "airflow_importable": importlib.util.find_spec("airflow") is not None,
            "executable": sys.executable,
        }

    @task
    def check_outputs(total: int, airflow_importable: bool, executable: str) -> None:
        print(f"outputs as XComs: sum={total} airflow_importable={airflow_importable} executable={executable}")

    described = describe(40, b=2)
    others = [check_outputs(described["sum"], described["airflow_importable"], described["executable"])]

    @task
    def make_data() -> str:
        import random

        return random.Random(15).randbytes(500_000).hex()  # 1 MB of text, 500 KB once compressed

    @task.slurm(**SLURM)
    def digest(data: str) -> str:
        import hashlib

        return hashlib.sha256(data.encode()).hexdigest()

    @task
    def compare(data: str, remote_digest: str) -> None:
        import hashlib

        local = hashlib.sha256(data.encode()).hexdigest()
        print(f"the {len(data)}-character argument arrived {'whole' if local == remote_digest else 'CHANGED'}")

    data = make_data()
    others.append(compare(data, digest(data)))

    @task.slurm(**SLURM)
    def validate(value: int) -> int:
        return check_input(value) * 2

    others.append(validate(11))

    @task.slurm(**SLURM)
    def print_lines(count: int) -> int:
        for number in range(count):
            print(f"printed line {number:04d} of {count}")
        return count

    others.append(print_lines(1000))

    @task.slurm(**SLURM)
    def uses_a_lock(value: Any) -> None:
        return None

    others.append(uses_a_lock(value=threading.Lock()))

    @task.slurm(setup=PYTHON_312, **SLURM)
    def on_python_312() -> None:
        return None

    others.append(on_python_312())

    @task.pbs(pbs_conn_id="pbs_local", poll_interval=1, walltime=timedelta(minutes=5))
    def on_pbs(x: int) -> str:
        import os

        return f"{x * 3} from PBS job {os.environ['PBS_JOBID']}"

    @task
    def show(value: str) -> None:
        print(f"the PBS task returned {value}")

    others.append(show(on_pbs(14)))

    @task.sge(sge_conn_id="sge_local", poll_interval=1, time_limit=timedelta(minutes=5))
    def on_sge(x: int) -> str:
        import os

        print(f"tripling {x} in Grid Engine job {os.environ['JOB_ID']}")
        return f"{x * 3} from SGE job {os.environ['JOB_ID']}"

    @task
    def show_sge(value: str) -> None:
        print(f"the SGE task returned {value}")

    others.append(show_sge(on_sge(14)))

    # Last of all (dags test runs one task at a time), so that the job still runs when "job" starts.
    @task(trigger_rule="all_done")
    def earlier_try_left_a_job(**context: Any) -> str:
        """Plays a worker that submitted the job of task ``job`` and crashed while it ran."""
        ti = context["ti"]
        key = JobKey.for_task_instance(ti.dag_id, "job", ti.run_id, -1, 1)
        call = serialize_call(square_slowly, (7,))
        manifest = PayloadManifest.for_call(
            call,
            InlineBody(encode_body(call.data)),
            FileResultTarget(cluster_files.result_template(DEFAULT_LOG_DIR, key, "slurm")),
        )
        spec = JobSpec(
            command=cluster_command("python3", manifest),
            job_name="py_outcomes.job",
            resources=Resources(time_limit=timedelta(minutes=5)),
        )

        async def submit() -> str:
            transport = SshTransport(SlurmHook("slurm_local").get_target())
            try:
                outcome = await submit_job(
                    transport, spec, slurm.render_script(spec), key=key, log_dir=DEFAULT_LOG_DIR, env={}
                )
            finally:
                await transport.close()
            assert outcome.job_id is not None and not outcome.adopted
            print(f"earlier try submitted job {outcome.job_id} with key {key.task_digest}")
            return outcome.job_id

        return asyncio.run(submit())

    @task.slurm(task_id="job", **SLURM)
    def job(x: int) -> dict[str, Any]:
        return square_slowly(x)

    @task
    def report(value: dict[str, Any]) -> None:
        print(f"the task returned square {value['square']} computed by Slurm job {value['job']}")

    earlier = earlier_try_left_a_job()
    others >> earlier
    adopted = job(7)
    earlier >> adopted
    report(adopted)
