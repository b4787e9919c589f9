"""Benchmark: what botocore's parsing of DescribeJobs answers costs, full vs cut to what the poller reads.

Prints figures, asserts nothing, needs no AWS. Parses ten answers of 100 job descriptions (the
shape AWS returns for a container job: image, command, environment, roles, resources, log
configuration, tags, ...) with botocore's own rest-json parser and the Batch service model, as
``BatchPoller.poll_once`` does at N=1000; then the same after cutting every description down to
the fields the poller and the Batch dialect read (the cut, a ``json`` round trip, included).

    .venv/bin/python bench/batch_describe_parse.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import botocore.session
from botocore.parsers import create_parser

JOBS_PER_ANSWER = 100
ANSWERS_PER_POLL = 10  # N = 1000
KEEP = {"jobId", "status", "statusReason", "attempts", "startedAt", "stoppedAt", "createdAt", "arrayProperties", "tags"}
KEEP_CONTAINER = {"exitCode", "reason", "logStreamName", "logConfiguration"}


def description(i: int) -> dict[str, Any]:
    arn = "arn:aws:batch:us-east-1:123456789012"
    return {
        "jobArn": f"{arn}:job/{i}",
        "jobName": "bench-job",
        "jobId": f"0f0e0d0c-1234-5678-9abc-{i:012d}",
        "jobQueue": f"{arn}:job-queue/q",
        "status": "RUNNING",
        "attempts": [],
        "statusReason": "",
        "createdAt": 1764561600000,
        "retryStrategy": {"attempts": 1, "evaluateOnExit": []},
        "startedAt": 1764561601000,
        "dependsOn": [],
        "jobDefinition": f"{arn}:job-definition/d:1",
        "parameters": {},
        "container": {
            "image": "busybox",
            "command": ["sh", "-c", "echo hi"],
            "jobRoleArn": "arn:aws:iam::123456789012:role/r",
            "executionRoleArn": "arn:aws:iam::123456789012:role/e",
            "volumes": [],
            "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "mountPoints": [],
            "readonlyRootFilesystem": False,
            "ulimits": [],
            "privileged": False,
            "user": "",
            "reason": "",
            "logStreamName": f"d/default/{i}",
            "networkInterfaces": [],
            "resourceRequirements": [{"value": "1", "type": "VCPU"}, {"value": "512", "type": "MEMORY"}],
            "linuxParameters": {"devices": []},
            "logConfiguration": {"logDriver": "awslogs", "options": {}, "secretOptions": []},
            "secrets": [],
            "networkConfiguration": {"assignPublicIp": "DISABLED"},
            "ephemeralStorage": {"sizeInGiB": 20},
            "runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"},
        },
        "timeout": {"attemptDurationSeconds": 3600},
        "tags": {"airflow-hpc:key": "abc", "airflow-hpc:claimed": "x"},
        "propagateTags": True,
        "platformCapabilities": ["EC2"],
        "eksAttempts": [],
        "isCancelled": False,
        "isTerminated": False,
    }


def cut(body: bytes) -> bytes:
    answer = json.loads(body)
    for job in answer["jobs"]:
        for name in [name for name in job if name not in KEEP and name != "container"]:
            del job[name]
        container = job.get("container") or {}
        for name in [name for name in container if name not in KEEP_CONTAINER]:
            del container[name]
    return json.dumps(answer).encode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20, help="polls parsed per figure (default 20)")
    args = parser.parse_args(argv)
    shape = botocore.session.get_session().get_service_model("batch").operation_model("DescribeJobs").output_shape
    rest_json = create_parser("rest-json")
    body = json.dumps({"jobs": [description(i) for i in range(JOBS_PER_ANSWER)]}).encode()

    def parse(data: bytes) -> None:
        rest_json.parse({"body": data, "headers": {}, "status_code": 200}, shape)

    cases: dict[str, Callable[[], None]] = {
        "full answers": lambda: parse(body),
        "cut answers": lambda: parse(cut(body)),
    }
    print(f"botocore rest-json parse of {ANSWERS_PER_POLL} DescribeJobs answers x {JOBS_PER_ANSWER} jobs (N=1000)")
    for label, one_answer in cases.items():
        started = time.process_time()
        for _ in range(args.rounds * ANSWERS_PER_POLL):
            one_answer()
        print(f"  {label}: {(time.process_time() - started) / args.rounds * 1000:.1f} ms CPU per poll")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
