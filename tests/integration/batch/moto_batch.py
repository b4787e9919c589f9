"""moto in server mode for the Batch tests, plus the test-only hooks this needs.

moto without Docker marks a job SUCCEEDED inside the SubmitJob call. To test streaming, cancel and
adoption, :class:`HeldJobs` wraps moto's ``BatchSimpleBackend._mark_job_as_finished`` in the test
process (where ``ThreadedMotoServer`` runs): jobs sent to a queue it holds start RUNNING and stay so
until the test finishes them, or until TerminateJob fails them as AWS does. Jobs sent to a queue it
*runs* start RUNNING too, and their container command (with the job's environment,
``AWS_BATCH_JOB_ID`` and S3 at moto) runs as a local process, the stand-in for a compute
environment: its output lines go to the job's CloudWatch stream and its exit code ends the job. Two more wraps make moto
answer as AWS does where it differs: FilterLogEvents naming a stream that does not exist fails with
``ResourceNotFoundException`` (moto silently skips the name), and RegisterJobDefinition numbers
revisions atomically (moto's threads can give two callers the same revision).

Array jobs (``arrayProperties.size``): moto makes the children ``<array>:<index>`` inside SubmitJob,
each with its own log stream (``<definition>/default/<array>:<index>``), and DescribeJobs answers
for a child id. Where moto differs from AWS, the wraps make it answer as AWS does: a child's
container gets ``AWS_BATCH_JOB_ARRAY_INDEX`` (and its own ``AWS_BATCH_JOB_ID``); the array job
itself runs no container and stays PENDING while its children run; TagResource refuses a child's
ARN (AWS: "ARNs for child jobs of array ... jobs aren't supported"); a container whose overrides
exceed 8,192 characters fails at start as ECS fails it; DescribeJobs no longer appends another
``AWS_BATCH_JOB_ID`` to the environment the children share with their array at every call
(moto mutates the overrides' list in place). Left as moto does it: ListJobs by queue also lists the
children (AWS lists them only by ``arrayJobId``); the array's status does not follow its children's
failures. Only moto is patched; the provider's code runs unchanged and reaches moto over HTTP.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import requests
from moto.batch.exceptions import ClientException
from moto.batch.models import BatchBackend, Job, batch_backends
from moto.batch_simple.models import BatchSimpleBackend
from moto.logs.exceptions import ResourceNotFoundException
from moto.logs.models import LogsBackend
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"
# ECS fails a container whose overrides (command and environment, as JSON) are longer.
OVERRIDES_LIMIT = 8192


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HeldJobs:
    queues: set[str] = field(default_factory=set)
    terminated: dict[str, str] = field(default_factory=dict)
    # Queues whose jobs run their container command as a local process (see the module docstring).
    running: set[str] = field(default_factory=set)
    endpoint_url: str | None = None
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    _logs: Any = None
    _making_logs: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> Iterator[None]:
        original_finish = BatchSimpleBackend._mark_job_as_finished
        original_terminate = Job.terminate
        original_filter = LogsBackend.filter_log_events
        original_register = BatchBackend.register_job_definition
        original_tag = BatchBackend.tag_resource
        original_property = Job._get_container_property
        registering = threading.Lock()
        held = self

        def finish(backend: Any, include_start_attempt: bool, job: Job) -> None:
            if job.job_queue.name not in held.queues | held.running:
                original_finish(backend, include_start_attempt, job)
                return
            backend.backend._jobs[job.job_id] = job
            if "size" in (job.array_properties or {}):
                job.status = "PENDING"  # an array job runs no container: its children do
                return
            job.job_started_at = datetime.datetime.now()
            job.log_stream_name = job._stream_name
            if include_start_attempt:
                job._start_attempt()
            job.status = "RUNNING"
            overrides = json.dumps(job.container_overrides or {}, separators=(",", ":"), ensure_ascii=False)
            if len(overrides) > OVERRIDES_LIMIT:
                job.job_stopped_reason = f"Container Overrides length must be at most {OVERRIDES_LIMIT}"
                job._mark_stopped(success=False)
                return
            if job.job_queue.name in held.running:
                threading.Thread(target=held.run_container, args=(job,), name=f"container-{job.job_id}").start()

        def tag_resource(backend: BatchBackend, resource_arn: str, tags: dict[str, str]) -> None:
            if ":" in resource_arn.rpartition("/")[2]:
                raise ClientException("ARNs for child jobs of array and multi-node parallel jobs aren't supported")
            original_tag(backend, resource_arn, tags)

        def container_property(job: Job, name: str, default: Any) -> Any:
            if name != "environment" or "environment" not in job.container_overrides:
                return original_property(job, name, default)
            # moto appends AWS_BATCH_JOB_ID to the overrides' own list (shared with the children)
            # at every DescribeJobs: hand it a copy.
            overrides = job.container_overrides
            job.container_overrides = {**overrides, "environment": list(overrides["environment"])}
            try:
                return original_property(job, name, default)
            finally:
                job.container_overrides = overrides

        def terminate(job: Job, reason: str) -> None:
            held.terminated[job.job_id] = reason
            process = held.processes.get(job.job_id)
            if process is not None:
                process.kill()
            if job.job_queue.name in held.queues | held.running and not job.job_stopped:
                job.job_stopped_reason = reason
                job._mark_stopped(success=False)
            else:
                original_terminate(job, reason)

        def filter_log_events(backend: LogsBackend, log_group_name: str, log_stream_names: Any, *args: Any) -> Any:
            group = backend.groups.get(log_group_name)
            if group is not None and any(name not in group.streams for name in log_stream_names or ()):
                raise ResourceNotFoundException("The specified log stream does not exist.")
            return original_filter(backend, log_group_name, log_stream_names, *args)

        def register_job_definition(backend: BatchBackend, *args: Any, **kwargs: Any) -> Any:
            with registering:
                return original_register(backend, *args, **kwargs)

        BatchSimpleBackend._mark_job_as_finished = finish  # type: ignore[method-assign]
        Job.terminate = terminate  # type: ignore[method-assign]
        LogsBackend.filter_log_events = filter_log_events  # type: ignore[method-assign,assignment]
        BatchBackend.register_job_definition = register_job_definition  # type: ignore[method-assign]
        BatchBackend.tag_resource = tag_resource  # type: ignore[method-assign]
        Job._get_container_property = container_property  # type: ignore[method-assign]
        try:
            yield
        finally:
            BatchBackend.tag_resource = original_tag  # type: ignore[method-assign]
            Job._get_container_property = original_property  # type: ignore[method-assign]
            BatchSimpleBackend._mark_job_as_finished = original_finish  # type: ignore[method-assign]
            Job.terminate = original_terminate  # type: ignore[method-assign]
            LogsBackend.filter_log_events = original_filter  # type: ignore[method-assign]
            BatchBackend.register_job_definition = original_register  # type: ignore[method-assign]

    def run_container(self, job: Job) -> None:
        """The container: the job's command with its environment; lines to CloudWatch, exit code to the job.

        ``python3`` is this venv's (first on PATH): it has cloudpickle and boto3, as an image for
        ``@task.batch`` would. Credentials are moto's, standing in for the job role's.
        """
        # Batch's awslogs driver makes the job's stream when the container starts, before its first
        # line: so does the stand-in (its lines arrive when the process ends).
        self.put_lines(str(job._stream_name), [])
        overrides = job.container_overrides or {}
        command = list(overrides.get("command") or [])
        environment = {item["name"]: item["value"] for item in overrides.get("environment", [])}
        env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
            "HOME": "/tmp",
            **environment,
            "AWS_BATCH_JOB_ID": job.job_id,
            **({"AWS_BATCH_JOB_ARRAY_INDEX": str(index)} if (index := _child_index(job)) is not None else {}),
            "AWS_ENDPOINT_URL": str(self.endpoint_url),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/tmp"
        )
        self.processes[job.job_id] = process
        output, _ = process.communicate()
        lines = output.splitlines()
        if lines:
            now = int(time.time() * 1000)
            self.put_lines(str(job._stream_name), [(now, line) for line in lines])
        if not job.job_stopped:
            self.finish(job.job_id, success=process.returncode == 0, exit_code=process.returncode)

    def put_lines(self, stream: str, lines: list[tuple[int, str]]) -> None:
        """The containers' lines, through one CloudWatch Logs client (each new one costs ~0.3 s of CPU)."""
        with self._making_logs:
            if self._logs is None:
                self._logs = MotoAws(url=str(self.endpoint_url), held=self).client("logs")
        MotoAws(url=str(self.endpoint_url), held=self).put_lines(stream, lines, client=self._logs)

    @staticmethod
    def job(job_id: str) -> Job:
        return batch_backends[ACCOUNT][REGION]._jobs[job_id]

    @staticmethod
    def submitted(queue: str) -> list[Job]:
        """The jobs moto's SubmitJob made in ``queue``, arrays once each (not their children):
        what the server counts, whatever a client believes it sent."""
        jobs = list(batch_backends[ACCOUNT][REGION]._jobs.values())
        return [job for job in jobs if job.job_queue.name == queue and ":" not in job.job_id]

    def finish(self, job_id: str, *, success: bool, exit_code: int | None = None, reason: str | None = None) -> None:
        job = self.job(job_id)
        if job.latest_attempt is not None and exit_code is not None:
            job.latest_attempt["container"]["exitCode"] = exit_code
        job.exit_code = exit_code
        job.job_stopped_reason = reason
        job._mark_stopped(success=success)


def _child_index(job: Job) -> int | None:
    """The index of an array's child (moto gives children ``arrayProperties.index``), else None."""
    index = (job.array_properties or {}).get("index")
    return index if isinstance(index, int) else None


@dataclass
class MotoAws:
    url: str
    held: HeldJobs

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def connection_uri(self, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": REGION, "endpoint_url": self.url, **extra},
            }
        )

    def make_queue(self, name: str, *, held: bool = False, runs_containers: bool = False) -> str:
        iam, batch = self.client("iam"), self.client("batch")
        try:
            role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            role = iam.get_role(RoleName="batch-service")["Role"]["Arn"]
        env = batch.create_compute_environment(
            computeEnvironmentName=f"ce-{name}", type="UNMANAGED", state="ENABLED", serviceRole=role
        )["computeEnvironmentArn"]
        batch.create_job_queue(
            jobQueueName=name,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}],
        )
        if held:
            self.held.queues.add(name)
        if runs_containers:
            self.held.endpoint_url = self.url
            self.held.running.add(name)
        return name

    def put_lines(
        self, stream: str, lines: list[tuple[int, str]], group: str = "/aws/batch/job", client: Any = None
    ) -> None:
        """Append ``lines`` to the stream, making the group and the stream first if need be."""
        logs = client or self.client("logs")
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=group)
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        if not lines:
            return
        logs.put_log_events(
            logGroupName=group, logStreamName=stream, logEvents=[{"timestamp": t, "message": m} for t, m in lines]
        )


def start_server() -> tuple[ThreadedMotoServer, str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    requests.post(f"{url}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10).raise_for_status()
    return server, url
