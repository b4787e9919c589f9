"""``example_dags/ec2_*.py`` through ``airflow dags test`` against moto and the local tunnel stand-in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.batch.moto_batch import MotoAws
from tests.integration.ec2.conftest import ec2_extra
from tests.integration.ec2.fake_ec2 import FakeInstances, StandIns

EXAMPLES = Path(__file__).resolve().parents[3] / "example_dags"


def dags_test(dag_id: str, moto_aws: MotoAws, stand_ins: StandIns, work_dir: Path, home: Path) -> str:
    env = {
        **os.environ,
        "PATH": stand_ins.path_with_stand_ins(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_AWS_EC2": moto_aws.connection_uri(ec2=ec2_extra(work_dir)),
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id], env=env, capture_output=True, text=True, timeout=300
    )
    return done.stdout + done.stderr


def test_the_ec2_hello_example_runs_with_airflow_dags_test(
    moto_aws: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns, work_dir: Path, tmp_path: Path
) -> None:
    output = dags_test("ec2_hello", moto_aws, stand_ins, work_dir, tmp_path)
    assert "state=success" in output and "DagRun Finished" in output, output[-4000:]
    launched = re.search(r"Launched EC2 instance (i-\w+)", output)
    assert launched, output[-4000:]
    assert "Hello from run" in output and re.search(r"token has 27 characters", output)
    assert "container ended COMPLETED (exit 0)" in output
    assert "not-a-real-token" not in output  # env values are never logged
    state = moto_aws.client("ec2").describe_instances(InstanceIds=[launched.group(1)])["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == "terminated"


def test_the_ec2_reaper_example_runs_in_dry_run_mode(
    moto_aws: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns, work_dir: Path, tmp_path: Path
) -> None:
    output = dags_test("ec2_reaper", moto_aws, stand_ins, work_dir, tmp_path)
    assert "state=success" in output and "DagRun Finished" in output, output[-4000:]
    assert "dry run: none terminated" in output
