"""``hpc-aws-setup batch``: provision, show and cleanup against moto, judged by moto's own inventory.

What a command says about itself is not evidence: each test reads every resource of every service
the set-up touches before and after (tests/integration/aws_setup/inventory.py) and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.setup.naming import TAG_KEY
from tests.integration.aws_setup.conftest import CONN_ID, SECRET, Ran, batch
from tests.integration.aws_setup.inventory import differences, inventory
from tests.integration.batch.moto_batch import ACCOUNT, REGION, MotoAws
from tests.integration.conftest import EXAMPLE_DAGS as EXAMPLES


def flags(name: str, *more: str) -> tuple[str, ...]:
    return ("--name", name, "--aws-conn-id", CONN_ID, "--non-interactive", *more)


def succeeded(ran: Ran) -> Ran:
    assert ran.code == 0, f"exit {ran.code}\nstdout:\n{ran.out}\nstderr:\n{ran.err}"
    assert SECRET not in ran.out and SECRET not in ran.err
    return ran


def states(ran: Ran) -> dict[str, str]:
    resources: list[dict[str, Any]] = ran.document["resources"]  # type: ignore[assignment]
    return {f"{r['kind']} {r['name']}": r["state"] for r in resources}


def made(name: str, *, mode: str = "revisions") -> set[str]:
    """What a default (EC2 compute) Batch set-up consists of, as paths in the inventory."""
    iam = [f"{name}-batch-{purpose}-{REGION}" for purpose in ("service", "instance", "job")]
    found = {f"new: /iam/roles/{role}" for role in iam}
    found |= {
        f"new: /iam/instance_profiles/{name}-batch-instance-{REGION}",
        f"new: /s3/{name}-scripts-{ACCOUNT}-{REGION}",
        f"new: /batch/compute_environments/{name}-compute",
        f"new: /batch/job_queues/{name}-queue",
        f"new: /cloudformation/{name}-batch-policies",
    }
    if mode != "auto":
        found.add(f"new: /batch/active_job_definitions/{name}-job:1")
    return found


def airflow_env(home: Path, connection: dict[str, Any]) -> dict[str, str]:
    """An ``airflow`` command's environment: its own home, example_dags/, the printed connection (with the
    keys it says to add) and the set-up's own connection to moto."""
    uri = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": connection["extra"]})
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        f"AIRFLOW_CONN_{connection['conn_id'].upper()}": uri,
    }


def airflow(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *argv], env=env, capture_output=True, text=True, timeout=300
    )


def test_provision_twice_changes_nothing_the_second_time_and_cleanup_brings_back_the_inventory_from_before(
    aws: MotoAws, name: str, cleanup_after: None, tmp_path: Path
) -> None:
    before = inventory(aws)
    first = succeeded(batch("provision", *flags(name, "--mode", "revisions", "--json")))
    assert set(states(first).values()) == {"created"}
    provisioned = inventory(aws)
    new = differences(before, provisioned)
    # Exactly the set-up's resources are new: its roles, profile, bucket, queue, environment,
    # definition and stack, one security group and the stack's six policies; nothing else changed.
    assert {line for line in new if not line.startswith(("new: /iam/policies/", "new: /ec2/security_groups/"))} == made(
        name
    )
    policies = [line for line in new if line.startswith("new: /iam/policies/")]
    assert len(policies) == 6 and all(f"{name}-batch-policies-" in line for line in policies)
    groups = [line.removeprefix("new: /ec2/security_groups/") for line in new if "/ec2/security_groups/" in line]
    assert [provisioned["ec2"]["security_groups"][g]["name"] for g in groups] == [f"{name}-batch-jobs"]
    # Everything it made carries its tag.
    assert provisioned["s3"][f"{name}-scripts-{ACCOUNT}-{REGION}"]["tags"] == [{"Key": TAG_KEY, "Value": name}]
    assert provisioned["batch"]["job_queues"][f"{name}-queue"]["tags"][TAG_KEY] == name
    assert {"Key": TAG_KEY, "Value": name} in provisioned["iam"]["roles"][f"{name}-batch-job-{REGION}"]["tags"]

    second = succeeded(batch("provision", *flags(name, "--mode", "revisions", "--json")))
    assert differences(provisioned, inventory(aws)) == []
    assert set(states(second).values()) == {"unchanged"}

    # The example DAG runs with the connection exactly as printed (plus the keys it says to add).
    connection: dict[str, Any] = second.document["connection"]  # type: ignore[assignment]
    env = airflow_env(tmp_path, connection)
    assert airflow(env, "db", "migrate").returncode == 0
    dag_test = airflow(env, "dags", "test", "batch_hello")
    output = dag_test.stdout + dag_test.stderr
    assert "state=success" in output and "DagRun Finished" in output, output[-4000:]
    jobs = aws.client("batch").list_jobs(jobQueue=f"{name}-queue", jobStatus="SUCCEEDED")["jobSummaryList"]
    assert len(jobs) == 1 and f"AWS Batch job {jobs[0]['jobId']} ended SUCCEEDED" in output
    assert f"Submitted AWS Batch job {jobs[0]['jobId']} (" in output
    assert "$(not run)" not in output  # the example's env values are never logged
    # What the DAG made itself is the task's, not the set-up's, and cleanup keeps it: at most auto mode's
    # definition, named by its content (another test of the session may have registered the same one).
    dag_made = differences(provisioned, inventory(aws))
    assert all(line.startswith("new: /batch/active_job_definitions/airflow-hpc-") for line in dag_made), dag_made
    assert len(dag_made) <= 1
    # The same command as an Airflow CLI command of the provider: the report alone on stdout.
    third = airflow(env, "hpc-aws-setup", "batch", "provision", *flags(name, "--mode", "revisions"))
    assert third.returncode == 0, third.stderr[-4000:]
    assert third.stdout.count("exists, unchanged") == len(states(second)), third.stdout
    assert "created" not in third.stdout and SECRET not in third.stdout + third.stderr

    cleaned = succeeded(batch("cleanup", *flags(name)))
    assert differences(before, inventory(aws)) == dag_made
    assert cleaned.out.count(": deleted") == len(made(name)) + 2  # + the security group, the policy attachment


def test_new_options_update_what_can_change_in_place_and_are_then_unchanged_too(
    aws: MotoAws, name: str, cleanup_after: None
) -> None:
    succeeded(batch("provision", *flags(name, "--mode", "revisions")))
    key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    changed = (
        "--mode", "revisions", "--max-vcpus", "32", "--script-expiry-days", "3", "--image", "repo/app:2",
        "--kms-key-arn", key, "--json",
    )  # fmt: skip
    updated = succeeded(batch("provision", *flags(name, *changed)))
    assert {k for k, v in states(updated).items() if v == "updated"} == {
        f"S3 bucket {name}-scripts-{ACCOUNT}-{REGION}",
        f"Batch compute environment {name}-compute",
        f"Batch job definition {name}-job",
        f"CloudFormation stack {name}-batch-policies",
    }
    after = inventory(aws)
    bucket = after["s3"][f"{name}-scripts-{ACCOUNT}-{REGION}"]
    assert bucket["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == key
    assert bucket["lifecycle"][0]["Expiration"]["Days"] == 3
    assert after["batch"]["compute_environments"][f"{name}-compute"]["computeResources"]["maxvCpus"] == 32
    assert after["batch"]["active_job_definitions"][f"{name}-job:2"]["container"]["image"] == "repo/app:2"
    document = updated.document
    assert document["operator_arguments"]["image"] == "repo/app:2"  # type: ignore[index]
    again = succeeded(batch("provision", *flags(name, *changed)))
    assert set(states(again).values()) == {"unchanged"} and differences(after, inventory(aws)) == []
    # What cannot change in place is refused, naming it, before anything changes.
    refused = batch("provision", *flags(name, "--mode", "revisions", "--compute", "fargate", "--kms-key-arn", key))
    assert refused.code == 1 and "differs from what was asked in type" in refused.err
    assert "run cleanup" in refused.err


def test_provision_refuses_a_name_it_did_not_make_and_creates_nothing(aws: MotoAws, name: str) -> None:
    aws.client("iam").create_role(RoleName=f"{name}-batch-job-{REGION}", AssumeRolePolicyDocument="{}")
    before = inventory(aws)
    refused = batch("provision", *flags(name))
    assert refused.code == 1
    assert f"IAM role {name}-batch-job-{REGION}" in refused.err and "not made by it" in refused.err
    assert "Choose another --name" in refused.err
    assert differences(before, inventory(aws)) == []
    aws.client("iam").delete_role(RoleName=f"{name}-batch-job-{REGION}")


def test_cleanup_leaves_alone_look_alikes_it_did_not_make(aws: MotoAws, name: str, cleanup_after: None) -> None:
    batch_api, iam, ec2 = aws.client("batch"), aws.client("iam"), aws.client("ec2")
    # Under the set-up's names, but not made by it: a definition without the tag, one with another
    # set-up's tag, a role its options do not need, a security group in another VPC.
    container = {"image": "busybox", "vcpus": 1, "memory": 128}
    batch_api.register_job_definition(jobDefinitionName=f"{name}-job", type="container", containerProperties=container)
    batch_api.register_job_definition(
        jobDefinitionName=f"{name}-job", type="container", containerProperties=container, tags={TAG_KEY: "other"}
    )
    iam.create_role(RoleName=f"{name}-batch-execution-{REGION}", AssumeRolePolicyDocument="{}")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ec2.create_security_group(GroupName=f"{name}-batch-jobs", Description="not ours", VpcId=vpc)
    before = inventory(aws)
    succeeded(batch("provision", *flags(name, "--mode", "auto")))
    cleaned = succeeded(batch("cleanup", *flags(name)))
    assert differences(before, inventory(aws)) == []
    assert f"Batch job definition {name}-job: left alone" in cleaned.out
    assert f"IAM role {name}-batch-execution-{REGION}: left alone" in cleaned.out
    # The definition's name now belongs to someone else (its latest revision is not ours): a mode that
    # needs it is refused before anything is made.
    refused = batch("provision", *flags(name, "--mode", "locked"))
    assert refused.code == 1 and f"Batch job definition {name}-job ({name}-job:2)" in refused.err
    assert differences(before, inventory(aws)) == []


def test_cleanup_stops_before_deleting_anything_while_its_policy_is_attached_elsewhere(
    aws: MotoAws, name: str, cleanup_after: None
) -> None:
    provisioned = succeeded(batch("provision", *flags(name, "--json")))
    policy = provisioned.document["attach_policies"][0]  # type: ignore[index]
    iam = aws.client("iam")
    controller = f"{name}-airflow"
    iam.create_role(RoleName=controller, AssumeRolePolicyDocument="{}")
    iam.attach_role_policy(RoleName=controller, PolicyArn=policy)
    before = inventory(aws)
    refused = batch("cleanup", *flags(name))
    assert refused.code == 1 and "nothing was deleted" in refused.err
    assert f"on role {controller}" in refused.err and "--detach-policies" in refused.err
    assert differences(before, inventory(aws)) == []
    cleaned = succeeded(batch("cleanup", *flags(name, "--detach-policies")))
    assert f"detached {policy.rsplit('/', 1)[-1]} from role {controller}" in cleaned.out
    assert iam.list_attached_role_policies(RoleName=controller)["AttachedPolicies"] == []  # the role itself stays
    iam.delete_role(RoleName=controller)


def test_cleanup_empties_the_scripts_the_provider_wrote_and_stops_at_anything_else(
    aws: MotoAws, name: str, cleanup_after: None
) -> None:
    succeeded(batch("provision", *flags(name)))
    s3, bucket = aws.client("s3"), f"{name}-scripts-{ACCOUNT}-{REGION}"
    s3.put_object(Bucket=bucket, Key="airflow-hpc/scripts/key/try1.sh", Body=b"echo hi")
    s3.put_object(Bucket=bucket, Key="results/important.csv", Body=b"1,2")
    before = inventory(aws)
    refused = batch("cleanup", *flags(name))
    assert refused.code == 1 and "results/important.csv" in refused.err and "--empty-bucket" in refused.err
    assert differences(before, inventory(aws)) == []
    s3.delete_object(Bucket=bucket, Key="results/important.csv")
    cleaned = succeeded(batch("cleanup", *flags(name)))
    assert "emptied 1 object version(s) first" in cleaned.out
    assert bucket not in inventory(aws)["s3"]


def test_show_prints_what_exists_what_is_missing_and_then_what_to_use(
    aws: MotoAws, name: str, cleanup_after: None
) -> None:
    empty = succeeded(batch("show", *flags(name, "--json")))
    assert set(states(empty).values()) == {"missing"} and "connection" not in empty.document
    succeeded(batch("provision", *flags(name, "--mode", "revisions")))
    shown = succeeded(batch("show", *flags(name, "--json")))
    assert set(states(shown).values()) == {"exists"}
    document: dict[str, Any] = shown.document
    assert document["connection"] == {
        "conn_id": "aws_batch",
        "conn_type": "aws",
        "extra": {"region_name": REGION, "job_queue": f"{name}-queue", "endpoint_url": aws.url},
    }
    assert document["operator_arguments"] == {
        "aws_conn_id": "aws_batch",
        "job_definition": f"{name}-job",
        "job_definition_mode": "revisions",
        "image": "public.ecr.aws/docker/library/bash:5.2",
        "script_bucket": f"{name}-scripts-{ACCOUNT}-{REGION}",
    }
    assert [arn.split("/")[-1].split("-")[-2] for arn in document["attach_policies"]] == [
        "RevisionsPolicy",
        "PassRolesPolicy",
        "ScriptUploadPolicy",
    ]
    text = succeeded(batch("show", *flags(name))).out
    assert "export AIRFLOW_CONN_AWS_BATCH='" in text and "put its id in Login and its secret in Password" in text
    aws.client("batch").update_job_queue(jobQueue=f"{name}-queue", state="DISABLED")
    aws.client("batch").delete_job_queue(jobQueue=f"{name}-queue")
    partial = succeeded(batch("show", *flags(name)))
    assert f"Batch job queue {name}-queue: missing" in partial.out and "not complete" in partial.out


def test_without_a_terminal_a_missing_choice_is_an_error_naming_its_flag(aws: MotoAws, name: str) -> None:
    missing_name = batch("provision", "--aws-conn-id", CONN_ID, "--non-interactive")
    assert missing_name.code == 1 and "--name is needed with --non-interactive" in missing_name.err
    bad_name = batch("provision", *flags("Not_Valid"))
    assert bad_name.code == 1 and "--name 'Not_Valid'" in bad_name.err
    no_connection = batch("provision", "--name", name, "--aws-conn-id", "nope", "--non-interactive")
    assert no_connection.code == 1 and "--aws-conn-id 'nope': no such Airflow connection" in no_connection.err


def test_without_a_region_anywhere_the_error_names_the_region_flag(
    aws: MotoAws, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_NO_REGION",
        json.dumps({"conn_type": "aws", "login": "testing", "password": SECRET, "extra": {"endpoint_url": aws.url}}),
    )
    for variable in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    ran = batch("show", "--name", name, "--aws-conn-id", "no_region", "--non-interactive")
    assert ran.code == 1 and "--region is needed with --non-interactive" in ran.err


def test_interactive_mode_asks_only_the_name_and_whether_to_go_ahead(
    aws: MotoAws, name: str, cleanup_after: None
) -> None:
    before = inventory(aws)
    declined = batch("provision", "--aws-conn-id", CONN_ID, answers=f"{name}\nn\n")
    assert declined.code == 1 and "nothing was created (not confirmed)" in declined.err
    assert differences(before, inventory(aws)) == []
    accepted = succeeded(batch("provision", "--aws-conn-id", CONN_ID, answers=f"{name}\ny\n"))
    # Two questions: the name, then whether to create the 10 resources of the defaults (auto, EC2).
    assert accepted.err.count("Name of this set-up") == 1 and accepted.err.count("?") == 1
    assert f"Create 10 resource(s) in account {ACCOUNT}, {REGION}" in accepted.err
    # All there: nothing to ask but the name.
    again = succeeded(batch("provision", "--aws-conn-id", CONN_ID, answers=f"{name}\n"))
    assert "?" not in again.err and "exists, unchanged" in again.out
