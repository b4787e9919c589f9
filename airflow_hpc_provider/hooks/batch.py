"""AWS Batch through the amazon provider's ``AwsBaseHook``: the standard ``aws`` connection decides
credentials, role assumption, region and ``endpoint_url``. Calls here are blocking boto3 calls; the
poller runs them in a thread so the triggerer's event loop never waits on the network.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.dialects import batch, batch_array
from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError, SubmissionError
from airflow_hpc_provider.hooks.aws import MultiServiceAwsHook
from airflow_hpc_provider.jobs import JobKey

log = logging.getLogger(__name__)

# The IAM actions the Airflow side needs, per job definition mode. cloudformation/batch_revision.yaml
# grants exactly these (one managed policy per mode); a test runs every mode against moto and checks
# that each call the code makes, with its resource, is granted there.
ACTIONS_EVERY_MODE = (
    "batch:DescribeJobDefinitions",  # resolve a definition, find a revision by its content tag
    "batch:ListJobs",  # find an earlier try's job to adopt
    "batch:DescribeJobs",  # watch; confirm the key and claim tags of a job to adopt
    "batch:SubmitJob",
    "batch:TagResource",  # the key tag at submission, the claim tag later
    "batch:TerminateJob",  # a user stopped the task, or its time ran out
    "logs:FilterLogEvents",  # stream the job's CloudWatch lines
)
ACTIONS_REGISTERING = (
    "batch:RegisterJobDefinition",
    "batch:DeregisterJobDefinition",  # only a revision that lost a registration race, our own
    "iam:PassRole",  # the job and execution roles the registered definition carries
)
ACTIONS_SCRIPT_UPLOAD = (
    "s3:GetEncryptionConfiguration",  # GetBucketEncryption: the bucket's default, stated on upload
    "s3:PutObject",
    "kms:GenerateDataKey",  # only for a bucket encrypted with SSE-KMS
)
ACTIONS_BY_MODE = {
    "locked": ACTIONS_EVERY_MODE,
    "revisions": ACTIONS_EVERY_MODE + ACTIONS_REGISTERING,
    "auto": ACTIONS_EVERY_MODE + ACTIONS_REGISTERING,
}

THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "ThrottledException"}
)
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
    }
)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_text(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", "")) or str(error)


@dataclass(frozen=True)
class ResolvedDefinition:
    """The job definition a job is submitted against, and whether this task registered it."""

    arn: str
    name: str
    revision: int
    image: str | None
    registered: bool = False


# Callers that find no revision for a content wait up to this long, then look again before they
# register: of many tasks starting together, the first to wake registers and the rest find it.
REGISTER_JITTER_S = 1.0


@dataclass(frozen=True)
class AdoptableJob:
    """A job of an earlier try that no try has claimed (see :meth:`BatchHook.find_job_to_adopt`)."""

    job_id: str
    job_name: str
    status: str

    @property
    def ended(self) -> bool:
        return self.status in batch.FINAL_STATES


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    encryption: str | None


class BatchHook(MultiServiceAwsHook):
    """Job definitions, submission, adoption, termination and script upload for AWS Batch.

    :param aws_conn_id: an Airflow connection of type ``aws``. Besides the amazon provider's own
        extras (``region_name``, ``role_arn``, ``endpoint_url``...), ``job_queue`` in the extra is
        the queue used when a task names none.
    :param region_name: overrides the connection's region.
    """

    def __init__(self, aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> None:
        super().__init__(aws_conn_id, region_name, client_type="batch")

    def default_queue(self) -> str | None:
        value = self.conn_config.extra_config.get("job_queue")
        return str(value) if value else None

    def where(self) -> str:
        return f"connection {self.aws_conn_id}, region {self.client().meta.region_name}"

    def max_array_size(self) -> int:
        """The most children one array of mapped task instances may have: Batch's 10,000, or
        ``max_array_size`` in the connection's extra (smaller: to keep arrays short, or in tests)."""
        value = self.conn_config.extra_config.get("max_array_size")
        if value is None:
            return batch_array.MAX_ARRAY_SIZE
        size = int(value) if isinstance(value, int | str) and str(value).isdigit() else 0
        if not batch_array.MIN_ARRAY_SIZE <= size <= batch_array.MAX_ARRAY_SIZE:
            raise ConnectionConfigError(
                f"connection {self.aws_conn_id}: max_array_size={value!r} must be a whole number from "
                f"{batch_array.MIN_ARRAY_SIZE} to {batch_array.MAX_ARRAY_SIZE}"
            )
        return size

    # -- job definitions ---------------------------------------------------------------------------

    def _revisions(self, name: str) -> list[dict[str, Any]]:
        # By name, not "name:rev": moto returns nothing for jobDefinitions=["name:2"] (AWS accepts
        # it), and one call by name answers every question asked here.
        pages = self.client().get_paginator("describe_job_definitions").paginate(jobDefinitionName=name)
        found: list[dict[str, Any]] = []
        for page in pages:
            found.extend(page.get("jobDefinitions", []))
        return sorted(found, key=lambda d: int(d.get("revision", 0)))

    @staticmethod
    def _resolved(definition: Mapping[str, Any], registered: bool = False) -> ResolvedDefinition:
        return ResolvedDefinition(
            arn=str(definition["jobDefinitionArn"]),
            name=str(definition["jobDefinitionName"]),
            revision=int(definition["revision"]),
            image=batch.image_of(definition),
            registered=registered,
        )

    def find_definition(self, ref: str) -> dict[str, Any]:
        """The definition ``ref`` names (latest ACTIVE revision for a bare name), or a clear error."""
        name, revision = batch.parse_definition_ref(ref)
        revisions = self._revisions(name)
        if not revisions:
            raise JobSpecError(f"job definition {name!r} does not exist ({self.where()})")
        if revision is not None:
            match = [d for d in revisions if int(d["revision"]) == revision]
            if not match:
                known = ", ".join(str(d["revision"]) for d in revisions)
                raise JobSpecError(f"job definition {name}:{revision} does not exist; known revisions: {known}")
            if match[0].get("status") != "ACTIVE":
                raise JobSpecError(
                    f"job definition {name}:{revision} is {match[0].get('status')} (deregistered); "
                    "Batch refuses new jobs on it. Name an ACTIVE revision, or give the bare name for the latest"
                )
            return match[0]
        active = [d for d in revisions if d.get("status") == "ACTIVE"]
        if not active:
            raise JobSpecError(
                f"job definition {name!r} has no ACTIVE revision (all {len(revisions)} are deregistered)"
            )
        return active[-1]

    def locked(self, ref: str) -> ResolvedDefinition:
        return self._resolved(self.find_definition(ref))

    def check_roles(self, roles: Mapping[str, str | None]) -> None:
        """RegisterJobDefinition refuses another account's roles: say so before AWS does, and why."""
        named = {kind: arn for kind, arn in roles.items() if arn}
        if not named:
            return
        account = self.account_id
        for kind, arn in named.items():
            owner = batch.role_account(arn)
            if owner is None:
                raise JobSpecError(f"{kind}={arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
            if owner != account:
                raise JobSpecError(batch.cross_account_message(arn, kind, account))

    def ensure_definition(self, name: str, body: Mapping[str, Any]) -> ResolvedDefinition:
        """The one ACTIVE revision of ``name`` with exactly ``body``: found by its content tag, else registered.

        The content hash is a tag on the revision, so any process finds it before registering.
        Callers that find none wait a random moment and look again, so of many starting together
        one registers and the others find it. Those that still register in the same instant all
        look again afterwards and use the lowest ACTIVE revision carrying the hash; each caller
        whose own revision lost deregisters it. Every caller ends on the same revision, and one
        ACTIVE revision per content remains.
        """
        digest = batch.content_hash(body)
        existing = self._with_content(name, digest)
        if existing is None:
            time.sleep(random.uniform(0.0, REGISTER_JITTER_S))
            existing = self._with_content(name, digest)
        if existing is not None:
            return self._resolved(existing)
        container = body.get("containerProperties") or {}
        self.check_roles(
            {"job_role_arn": container.get("jobRoleArn"), "execution_role_arn": container.get("executionRoleArn")}
        )
        request = {**body, "jobDefinitionName": name, "tags": {**(body.get("tags") or {}), batch.CONTENT_TAG: digest}}
        try:
            answer = self.client().register_job_definition(**request)
        except ClientError as error:
            raise SubmissionError(
                f"RegisterJobDefinition of {name}", self.where(), None, f"{error_code(error)}: {error_text(error)}"
            ) from error
        ours = int(answer["revision"])
        winner = self._with_content(name, digest)
        if winner is None or int(winner["revision"]) == ours:
            log.info("Registered job definition %s:%s (content %s)", name, ours, digest)
            if winner is not None:
                return self._resolved(winner, registered=True)
            return ResolvedDefinition(
                arn=answer["jobDefinitionArn"], name=name, revision=ours, image=None, registered=True
            )
        # Another caller registered the same content first: use its revision, withdraw ours.
        try:
            self.client().deregister_job_definition(jobDefinition=str(answer["jobDefinitionArn"]))
        except ClientError as error:
            log.warning("could not deregister the duplicate revision %s:%s: %s", name, ours, error_text(error))
        log.info(
            "Job definition %s:%s has the same content, registered a moment earlier: using it (not :%s)",
            name,
            winner["revision"],
            ours,
        )
        return self._resolved(winner)

    def _with_content(self, name: str, digest: str) -> dict[str, Any] | None:
        """The lowest ACTIVE revision of ``name`` tagged with this content hash."""
        for definition in self._revisions(name):  # lowest revision first
            if definition.get("status") == "ACTIVE" and (definition.get("tags") or {}).get(batch.CONTENT_TAG) == digest:
                return definition
        return None

    def revision_for_image(self, template_ref: str, image: str) -> ResolvedDefinition:
        """``revisions`` mode: the template itself when it runs ``image``, else the template's content
        with ``image``, registered under a name derived from the template (never the template's own)."""
        template = self.find_definition(template_ref)
        if batch.image_of(template) == image:
            return self._resolved(template)
        body = batch.revision_body(template, image)
        name = batch.revision_definition_name(str(template["jobDefinitionName"]), batch.content_hash(body))
        return self.ensure_definition(name, body)

    # -- jobs --------------------------------------------------------------------------------------

    def submit(self, request: Mapping[str, Any]) -> str:
        try:
            answer = self.client().submit_job(**request)
        except ClientError as error:
            raise SubmissionError(
                f"SubmitJob of {request.get('jobName')} to {request.get('jobQueue')}",
                self.where(),
                None,
                f"{error_code(error)}: {error_text(error)}",
            ) from error
        return str(answer["jobId"])

    def find_job_to_adopt(self, queue: str, base: str, key: JobKey) -> AdoptableJob | None:
        """A job of an earlier try of this task instance whose outcome no try has taken yet.

        That is a job without the claim tag (:data:`~dialects.batch.CLAIM_TAG`): no trigger watched
        it, no try read its end, we never terminated it. It is either still queued or running (the
        worker that submitted it died before deferring) or it ended while nothing watched it. A job
        that is live wins; else the newest that ended. A job a trigger watched (a cleared task's,
        being terminated by its trigger's ``on_kill``) is never adopted.
        """
        pages = (
            self.client()
            .get_paginator("list_jobs")
            .paginate(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [batch.job_name_pattern(base, key)]}])
        )
        # With a filter, ListJobs returns jobs in every status (its jobStatus is ignored).
        candidates = [str(summary["jobId"]) for page in pages for summary in page.get("jobSummaryList", [])]
        if not candidates:
            return None
        ours = []
        for job in self.describe_jobs(candidates):
            tags = job.get("tags") or {}
            # The name is only a filter; the key tag says for sure whose job it is.
            if JobKey.task_digest_of(tags.get(batch.KEY_TAG, "")) == key.task_digest and batch.CLAIM_TAG not in tags:
                ours.append(job)
        ours.sort(key=lambda job: int(job.get("createdAt", 0)))
        live = [job for job in ours if job.get("status") in batch.LIVE_STATES]
        ended = [job for job in ours if job.get("status") in batch.FINAL_STATES]
        chosen = live[0] if live else (ended[-1] if ended else None)
        if chosen is None:
            return None
        return AdoptableJob(job_id=str(chosen["jobId"]), job_name=str(chosen["jobName"]), status=str(chosen["status"]))

    def arrays_named(self, queue: str, name_filter: str) -> list[dict[str, Any]]:
        """DescribeJobs of every array job (children left out) whose name matches ``name_filter``."""
        pages = (
            self.client()
            .get_paginator("list_jobs")
            .paginate(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [name_filter]}])
        )
        # AWS lists an array's children only by arrayJobId; moto lists them by queue too.
        ids = [str(summary["jobId"]) for page in pages for summary in page.get("jobSummaryList", [])]
        return self.describe_jobs([job_id for job_id in ids if ":" not in job_id])

    def claim(self, job_id: str, by: str) -> None:
        """Tag the job as taken by a try (``by``: who took it): no later try adopts it."""
        described = self.describe_jobs([job_id])
        if not described:
            raise JobSpecError(f"AWS Batch job {job_id} does not exist ({self.where()})")
        self.client().tag_resource(resourceArn=str(described[0]["jobArn"]), tags={batch.CLAIM_TAG: by})

    def describe_jobs(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(job_ids), batch.DESCRIBE_BATCH):
            found.extend(self.client().describe_jobs(jobs=list(job_ids[start : start + batch.DESCRIBE_BATCH]))["jobs"])
        return found

    def terminate(self, job_id: str, reason: str) -> None:
        """Claim the job (a retry must not adopt what we stopped), then terminate it.

        A child of an array (``<array>:<index>``) is terminated alone, its siblings untouched; it
        is not claimed: Batch cannot tag a child, and only its own try ever adopts it."""
        if ":" not in job_id:
            try:
                self.claim(job_id, batch.CLAIM_BY_TERMINATE)
            except (ClientError, JobSpecError) as error:  # terminating matters more than the tag
                log.warning("could not tag AWS Batch job %s before terminating it: %s", job_id, error)
        self.client().terminate_job(jobId=job_id, reason=reason)

    # -- scripts too large for SubmitJob, and Python tasks' payloads ---------------------------------

    def bucket_encryption(self, bucket: str) -> dict[str, Any]:
        """The bucket's default encryption as PutObject arguments (empty: none, or not ours to read).

        Buckets whose policy demands an encryption header on every PutObject refuse a plain upload,
        so uploads state the bucket's default (SSE-S3, or SSE-KMS with its key) explicitly.
        """
        s3 = self.client("s3")
        extra: dict[str, Any] = {}
        try:
            rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as error:
            if error_code(error) not in ("ServerSideEncryptionConfigurationNotFoundError", "AccessDenied"):
                raise ConnectionConfigError(f"cannot read s3://{bucket}: {error_text(error)}") from error
            rules = []
        if rules:
            default = rules[0].get("ApplyServerSideEncryptionByDefault") or {}
            algorithm = default.get("SSEAlgorithm")
            if algorithm:
                extra["ServerSideEncryption"] = algorithm
            if default.get("KMSMasterKeyID"):
                extra["SSEKMSKeyId"] = default["KMSMasterKeyID"]
            if rules[0].get("BucketKeyEnabled"):
                extra["BucketKeyEnabled"] = True
        return extra

    def store_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> StoredObject:
        """Upload with the bucket's own default encryption stated explicitly (:meth:`bucket_encryption`)."""
        extra = self.bucket_encryption(bucket)
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, **extra)
        return StoredObject(
            uri=f"s3://{bucket}/{key}",
            sha256=hashlib.sha256(data).hexdigest(),
            encryption=extra.get("ServerSideEncryption"),
        )

    def store_script(self, bucket: str, key: str, script: str) -> StoredObject:
        return self.store_bytes(bucket, key, script.encode(), "text/x-shellscript")
