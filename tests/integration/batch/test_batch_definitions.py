"""Job definition modes, overrides, env delivery, S3 offload and the clear errors, against moto over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.hooks.batch import BatchHook
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import ACCOUNT, HeldJobs, MotoAws

ROOT = Path(__file__).resolve().parents[3]


class FakeTI:
    """The parts of a task instance the operator reads when it does not defer."""

    def __init__(self, task_id: str, try_number: int = 1, run_id: str = "run-1") -> None:
        self.dag_id, self.task_id, self.run_id = "batch_tests", task_id, run_id
        self.map_index, self.try_number = -1, try_number
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def run(op: BatchRevisionOperator, ti: FakeTI) -> str:
    return op.execute({"ti": ti})  # type: ignore[arg-type]


def template(aws: MotoAws, image: str = "repo/app:1") -> str:
    name = f"tmpl-{uuid.uuid4().hex[:8]}"
    aws.client("batch").register_job_definition(
        jobDefinitionName=name,
        type="container",
        parameters={"stage": "prod"},
        retryStrategy={"attempts": 2},
        timeout={"attemptDurationSeconds": 3600},
        propagateTags=True,
        tags={"team": "research"},
        containerProperties={
            "image": image,
            "command": ["echo", "template"],
            "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "4096"}],
            "environment": [{"name": "FROM_TEMPLATE", "value": "1"}],
        },
    )
    return name


def revisions(aws: MotoAws, name: str) -> list[dict[str, Any]]:
    return aws.client("batch").describe_job_definitions(jobDefinitionName=name)["jobDefinitions"]


def operator(queue: str, **kwargs: Any) -> BatchRevisionOperator:
    kwargs.setdefault("command", "echo hello")
    return BatchRevisionOperator(
        task_id=kwargs.pop("task_id", f"t{uuid.uuid4().hex[:6]}"),
        aws_conn_id=CONN_ID,
        job_queue=queue,
        wait_for_completion=False,
        **kwargs,
    )


def test_locked_mode_submits_against_the_named_revision_and_warns_once_about_another_image(
    aws: MotoAws, queue: str, capfd: pytest.CaptureFixture[str]
) -> None:
    name = template(aws)
    for _ in range(2):
        job_id = run(operator(queue, job_definition=f"{name}:1", image="repo/app:2"), FakeTI("locked"))
    assert HeldJobs.job(job_id).job_definition.arn.endswith(f"job-definition/{name}:1")
    out, err = capfd.readouterr()
    assert (out + err).count("runs repo/app:1, not repo/app:2") == 1
    assert len(revisions(aws, name)) == 1


def derived_name(job_id: str) -> str:
    return HeldJobs.job(job_id).job_definition.arn.split("/")[-1].split(":")[0]


def test_revisions_mode_registers_one_revision_per_new_image_copying_the_templates_fields(
    aws: MotoAws, queue: str
) -> None:
    name = template(aws)
    first = run(operator(queue, job_definition=name, job_definition_mode="revisions", image="repo/app:2"), FakeTI("r"))
    second = run(operator(queue, job_definition=name, job_definition_mode="revisions", image="repo/app:2"), FakeTI("s"))
    assert [d["revision"] for d in revisions(aws, name)] == [1]  # the template's own name is left alone
    derived = derived_name(first)
    assert derived.startswith(f"{name}-airflow-hpc-") and derived_name(second) == derived
    (new,) = revisions(aws, derived)
    assert new["containerProperties"]["image"] == "repo/app:2"
    assert new["containerProperties"]["environment"] == [{"name": "FROM_TEMPLATE", "value": "1"}]
    assert new["parameters"] == {"stage": "prod"} and new["retryStrategy"]["attempts"] == 2
    assert new["timeout"] == {"attemptDurationSeconds": 3600} and new["tags"]["team"] == "research"
    assert batch.CONTENT_TAG in new["tags"]
    for job_id in (first, second):
        assert HeldJobs.job(job_id).job_definition.revision == 1


def test_a_revisions_task_never_changes_what_a_locked_task_naming_the_same_template_runs(
    aws: MotoAws, queue: str
) -> None:
    name = template(aws, image="repo/app:1")
    locked_before = run(operator(queue, job_definition=name), FakeTI("locked-before"))
    revised = run(
        operator(queue, job_definition=name, job_definition_mode="revisions", image="repo/app:7"), FakeTI("r")
    )
    locked_after = run(operator(queue, job_definition=name), FakeTI("locked-after"))
    images = {
        job_id: HeldJobs.job(job_id).job_definition.container_properties["image"]
        for job_id in (locked_before, revised, locked_after)
    }
    assert images == {locked_before: "repo/app:1", revised: "repo/app:7", locked_after: "repo/app:1"}
    # What a console user or another DAG gets for the bare name: still the template's own revision.
    described = revisions(aws, name)
    assert [(d["revision"], d["containerProperties"]["image"], d["status"]) for d in described] == [
        (1, "repo/app:1", "ACTIVE")
    ]


def test_revisions_are_found_again_by_a_second_separate_process(aws: MotoAws) -> None:
    name = template(aws)
    code = (
        "import sys; from airflow_hpc_provider.hooks.batch import BatchHook\n"
        f"d = BatchHook({CONN_ID!r}).revision_for_image({name!r}, 'repo/app:9')\n"
        "print('REVISION', d.name, d.revision, d.registered)\n"
    )
    env = {"AIRFLOW_CONN_AWS_MOTO": aws.connection_uri(), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    answers = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        answers.append(next(line for line in done.stdout.splitlines() if line.startswith("REVISION")).split())
    (_, derived, revision, registered), (_, derived_again, revision_again, registered_again) = answers
    assert (derived, revision, registered) == (derived_again, revision_again, "True") and registered_again == "False"
    assert [d["revision"] for d in revisions(aws, name)] == [1]
    assert [d["revision"] for d in revisions(aws, derived)] == [1]


CONCURRENT_CALLERS = r"""
import sys, threading, time
from airflow_hpc_provider.hooks.batch import BatchHook
template, start_at, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
images = sys.argv[4:]
answers = []
def call(image):
    hook = BatchHook("aws_moto")
    hook.client()  # connection and client built before the start signal
    time.sleep(max(0.0, start_at - time.time()))
    d = hook.revision_for_image(template, image)
    answers.append(f"{image} {d.name}:{d.revision}")
workers = [threading.Thread(target=call, args=(image,)) for image in images for _ in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print("\n".join("ANSWER " + a for a in answers))
"""


def test_twenty_callers_in_two_processes_converge_on_one_revision_per_image(aws: MotoAws) -> None:
    name = template(aws)
    images = [f"repo/race:{uuid.uuid4().hex[:6]}" for _ in range(3)]
    env = {"AIRFLOW_CONN_AWS_MOTO": aws.connection_uri(), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    start_at = time.time() + 15  # both processes imported and connected by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_CALLERS, name, str(start_at), "10", *images],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    answers: list[str] = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        answers += [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("ANSWER ")]
    assert len(answers) == 2 * 10 * len(images)
    chosen: dict[str, set[str]] = {}
    for answer in answers:
        image, definition = answer.split()
        chosen.setdefault(image, set()).add(definition)
    assert all(len(definitions) == 1 for definitions in chosen.values()), chosen
    for image, (definition,) in chosen.items():
        derived, revision = definition.split(":")
        active = [d for d in revisions(aws, derived) if d["status"] == "ACTIVE"]
        assert [str(d["revision"]) for d in active] == [revision], (image, active)
        assert active[0]["containerProperties"]["image"] == image
    assert [d["revision"] for d in revisions(aws, name)] == [1]


def test_auto_mode_registers_one_generic_definition_named_from_image_roles_and_log_group(
    aws: MotoAws, queue: str
) -> None:
    role = aws.client("iam").create_role(RoleName=f"job-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument="{}")
    arn = role["Role"]["Arn"]
    ids = [
        run(operator(queue, image="repo/auto:1", job_role_arn=arn, log_group="/custom/logs"), FakeTI(f"a{i}"))
        for i in range(2)
    ]
    definitions = {HeldJobs.job(job_id).job_definition.arn for job_id in ids}
    assert len(definitions) == 1
    (arn_used,) = definitions
    name = arn_used.split("/")[-1].split(":")[0]
    assert name.startswith("airflow-hpc-")
    (registered,) = revisions(aws, name)
    props = registered["containerProperties"]
    assert props["image"] == "repo/auto:1" and props["jobRoleArn"] == arn
    assert props["logConfiguration"]["options"]["awslogs-group"] == "/custom/logs"
    other = run(operator(queue, image="repo/auto:2"), FakeTI("a3"))
    assert HeldJobs.job(other).job_definition.arn != arn_used


def test_overrides_and_env_travel_through_the_api_and_the_script_names_only_the_variables(
    aws: MotoAws, queue: str, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cr3t value; $(touch /tmp/pwned) `x`"
    job_id = run(
        operator(
            queue,
            image="repo/env:1",
            command='echo "$TOKEN"',
            env={"TOKEN": secret, "MODE": "fast"},
            vcpus=4,
            memory="8G",
            gpus=1,
            timeout=timedelta(minutes=30),
            retry_attempts=3,
            tags={"project": "p1"},
            share_identifier="teamA",
            scheduling_priority=7,
            array_size=3,
        ),
        FakeTI("overrides", try_number=2),
    )
    job = HeldJobs.job(job_id)
    overrides = job.container_overrides
    script = overrides["command"][2]
    assert overrides["command"][:2] == ["bash", "-c"]
    assert "# environment from the Batch API: TOKEN MODE" in script and secret not in script
    assert {"name": "TOKEN", "value": secret} in overrides["environment"]
    assert sorted(overrides["resourceRequirements"], key=lambda r: r["type"]) == [
        {"type": "GPU", "value": "1"},
        {"type": "MEMORY", "value": "8192"},
        {"type": "VCPU", "value": "4"},
    ]
    assert job.timeout == {"attemptDurationSeconds": 1800}
    assert len(job._child_jobs or []) == 3
    tags = aws.client("batch").list_tags_for_resource(resourceArn=job.arn)["tags"]
    assert tags["project"] == "p1" and tags[batch.KEY_TAG].endswith(":try2")
    assert job.job_name.startswith("batch_tests-overrides-") and job.job_name.endswith("-t2")
    out, err = capfd.readouterr()
    assert "Submitted AWS Batch job" in out + err and secret not in out + err


def test_env_values_reach_the_job_byte_exact_with_their_final_newline(aws: MotoAws, queue: str) -> None:
    env = {"PLAIN": "value\n", "TEMPLATED": "{{ 'rendered' }}\n", "TWO": "a\n\n", "SPACES": " x "}
    op = operator(queue, image="repo/env:1", env=env)
    op.render_template_fields({})  # type: ignore[arg-type]  # what the task runner does before execute
    job_id = run(op, FakeTI("newline"))
    sent = {e["name"]: e["value"] for e in HeldJobs.job(job_id).container_overrides["environment"] if e["name"] in env}
    assert sent == {"PLAIN": "value\n", "TEMPLATED": "rendered\n", "TWO": "a\n\n", "SPACES": " x "}


def test_a_script_too_large_for_submitjob_goes_to_s3_with_the_buckets_kms_encryption(aws: MotoAws, queue: str) -> None:
    s3, bucket = aws.client("s3"), f"scripts-{uuid.uuid4().hex[:8]}"
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}}]
        },
    )
    big = "\n".join(f"echo line {i} {'x' * 60}" for i in range(600))
    job_id = run(operator(queue, image="repo/big:1", command=big, script_bucket=bucket), FakeTI("big"))
    bootstrap = HeldJobs.job(job_id).container_overrides["command"][2]
    assert len(bootstrap) < 400 and "aws s3 cp" in bootstrap and "sha256sum -c" in bootstrap
    (obj,) = s3.list_objects_v2(Bucket=bucket)["Contents"]
    head = s3.head_object(Bucket=bucket, Key=obj["Key"])
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
    assert big in body and f"s3://{bucket}/{obj['Key']}" in bootstrap


def test_a_large_script_without_a_bucket_is_refused_before_anything_is_submitted(aws: MotoAws, queue: str) -> None:
    with pytest.raises(JobSpecError, match="give script_bucket="):
        run(operator(queue, image="repo/big:1", command="x" * 30000), FakeTI("nobucket"))


def test_a_10_kb_script_under_the_threshold_goes_to_s3_since_ecs_would_not_start_its_container(
    aws: MotoAws, queue: str
) -> None:
    """Before: inline up to offload_threshold_bytes (20 KiB), so the job ended FAILED at start:
    "Container Overrides length must be at most 8192" (ECS; the stand-in fails it the same way)."""
    s3, bucket = aws.client("s3"), f"scripts-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    script = "\n".join(f"echo line {i} {'y' * 40}" for i in range(200))  # about 10 KB
    assert 8192 < len(script) < batch.DEFAULT_OFFLOAD_THRESHOLD_BYTES
    job_id = run(operator(queue, image="repo/big:1", command=script, script_bucket=bucket), FakeTI("mid"))
    overrides = HeldJobs.job(job_id).container_overrides
    assert batch.overrides_length(overrides) <= batch.OVERRIDES_BUDGET
    assert "aws s3 cp" in overrides["command"][2]


def test_env_values_too_large_for_the_container_overrides_are_refused_before_submitjob(
    aws: MotoAws, queue: str
) -> None:
    with pytest.raises(JobSpecError, match=r"container overrides; ECS fails a container past 8192"):
        run(operator(queue, image="repo/big:1", command="true", env={"BIG": "z" * 9000}), FakeTI("bigenv"))


def test_the_git_block_checks_out_the_commit_the_ref_pointed_at_when_the_task_started(
    aws: MotoAws, queue: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    job_id = run(operator(queue, image="repo/git:1", git={"repo": f"file://{repo}", "ref": "main"}), FakeTI("git"))
    script = HeldJobs.job(job_id).container_overrides["command"][2]
    assert f"checkout --quiet {sha}" in script and "git clone --quiet --no-checkout" in script


# --- errors ---------------------------------------------------------------------------------------


def test_a_missing_job_definition_is_a_clear_error(aws: MotoAws, queue: str) -> None:
    with pytest.raises(JobSpecError, match=r"job definition 'nope-.*' does not exist \(connection aws_moto"):
        run(operator(queue, job_definition=f"nope-{uuid.uuid4().hex[:6]}"), FakeTI("missing"))


def test_an_inactive_revision_is_a_clear_error(aws: MotoAws, queue: str) -> None:
    name = template(aws)
    aws.client("batch").deregister_job_definition(jobDefinition=f"{name}:1")
    with pytest.raises(JobSpecError, match=rf"{name}:1 is INACTIVE \(deregistered\)"):
        run(operator(queue, job_definition=f"{name}:1"), FakeTI("inactive"))
    with pytest.raises(JobSpecError, match="has no ACTIVE revision"):
        run(operator(queue, job_definition=name), FakeTI("inactive2"))


def test_an_image_override_in_locked_mode_is_an_error_when_strict(aws: MotoAws, queue: str) -> None:
    name = template(aws)
    with pytest.raises(JobSpecError, match=r"cannot override an image at submission.*'revisions'"):
        run(operator(queue, job_definition=name, image="repo/other:1", strict_image=True), FakeTI("strict"))


def test_a_cross_account_role_is_refused_with_the_reason_and_what_to_do(aws: MotoAws, queue: str) -> None:
    role = "arn:aws:iam::999999999999:role/data-reader"
    with pytest.raises(JobSpecError) as error:
        run(operator(queue, image="repo/x:1", job_role_arn=role), FakeTI("xacct"))
    text = str(error.value)
    assert "belongs to account 999999999999" in text and f"registered in account {ACCOUNT}" in text
    assert "iam:PassRole" in text and "sts:AssumeRole" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vcpus": 0}, "vcpus=0 must be a positive number"),
        ({"vcpus": 1.5}, "EC2 compute environments take whole vCPUs"),
        ({"vcpus": 3, "platform": "FARGATE"}, "not a Fargate size"),
        ({"memory": "lots"}, "is not a memory size"),
        ({"memory": 2}, "below AWS Batch's minimum of 4 MiB"),
        ({"timeout": timedelta(seconds=59)}, "attemptDurationSeconds must be at least 60s"),
        ({"retry_attempts": 11}, "retry_attempts=11 must be a whole number from 1 to 10"),
    ],
)
def test_invalid_values_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(JobSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BatchRevisionOperator(task_id="bad", command="true", image="x:1", **kwargs)


def test_the_hook_reads_the_default_queue_and_endpoint_from_the_aws_connection(
    aws: MotoAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_QUEUED", aws.connection_uri(job_queue="from-conn"))
    hook = BatchHook("aws_queued")
    assert hook.default_queue() == "from-conn"
    assert hook.client().meta.endpoint_url == aws.url
    assert json.loads(aws.connection_uri())["conn_type"] == "aws"
