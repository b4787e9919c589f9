"""What the remote bootstrap is told: the payload (or where it is), where the result goes, what to match.

Pure: JSON text built from frozen records. The bootstrap (``remote_bootstrap.py``) reads exactly
these fields; both sides carry :data:`FORMAT`, and since the bootstrap travels in the same job script
or container command as its manifest, the two never come from different releases.

Result locations are *templates*: ``{SLURM_JOB_ID}`` (or ``{PBS_JOBID}``, ``{AWS_BATCH_JOB_ID}``) is
filled in by the job from its own environment. A result is therefore named by the job that wrote it:
a retry that adopts the job an earlier try submitted finds its result from the job id alone, and
array elements (one payload, many jobs) never write over each other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.python_task.codec import EncodedBody
from airflow_hpc_provider.python_task.serializer import PythonVersion, SerializedCall

FORMAT = 1
# A result document's values up to this size (pickled, base64) come back inline and become XComs;
# larger ones stay remote and the XCom holds a RemoteResult reference.
DEFAULT_RESULT_INLINE_LIMIT_BYTES = 1024 * 1024

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_template(template: str, allowed: frozenset[str]) -> str:
    """A location template may name only ``allowed`` environment variables, and no other braces."""
    for name in _PLACEHOLDER.findall(template):
        if name not in allowed:
            raise ValueError(f"{template!r} names ${name}; only {', '.join(sorted(allowed))} may be used")
    if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
        raise ValueError(f"{template!r} has a brace that is not a {{NAME}} placeholder")
    if "\n" in template or "\x00" in template:
        raise ValueError(f"{template!r} has a newline or a NUL byte")
    return template


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """The location a job wrote to, on the worker: the job's id (and array index) filled in."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"{template!r} needs {name}")
        return values[name]

    return _PLACEHOLDER.sub(value, template)


# --- where the payload is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InlineBody:
    """The encoded pickle inside the manifest itself."""

    body: EncodedBody

    def to_json(self) -> dict[str, Any]:
        return {
            "where": "inline",
            "text": self.body.inline_text,
            "compression": self.body.compression.value,
            "sha256": self.body.sha256,
        }


@dataclass(frozen=True)
class FileBody:
    """A file on the cluster (relative paths are under the login user's home), written before submission."""

    path: str
    body: EncodedBody

    def to_json(self) -> dict[str, Any]:
        return {
            "where": "file",
            "path": self.path,
            "compression": self.body.compression.value,
            "sha256": self.body.sha256,
        }


@dataclass(frozen=True)
class S3Body:
    """An S3 object; ``url`` (a presigned GET) lets an image without boto3 fetch it."""

    bucket: str
    key: str
    body: EncodedBody
    url: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "where": "s3",
            "bucket": self.bucket,
            "key": self.key,
            "url": self.url,
            "compression": self.body.compression.value,
            "sha256": self.body.sha256,
        }


PayloadBody = InlineBody | FileBody | S3Body


# --- where the result goes --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResultTarget:
    """The result document's path on the cluster, a template filled in by the job (see module doc)."""

    path_template: str

    def to_json(self) -> dict[str, Any]:
        return {"where": "file", "path": self.path_template}


@dataclass(frozen=True)
class S3ResultTarget:
    """The result document's S3 key (a template), with the bucket's default encryption stated on upload.

    ``put_url`` is a presigned PUT for the document only, for images without boto3: with it, values
    past the inline limit cannot be stored (one URL, one object), and whoever can read the job's
    environment (``batch:DescribeJobs``) can write the result until the URL expires. See the docs.
    """

    bucket: str
    key_template: str
    encryption: Mapping[str, Any] = field(default_factory=dict)
    put_url: str | None = field(default=None, repr=False)
    put_headers: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "where": "s3",
            "bucket": self.bucket,
            "key": self.key_template,
            "encryption": dict(self.encryption),
            "put_url": self.put_url,
            "put_headers": dict(self.put_headers),
        }


ResultTarget = FileResultTarget | S3ResultTarget


@dataclass(frozen=True)
class PayloadManifest:
    python: PythonVersion
    serializer: str
    serializer_version: str
    body: PayloadBody
    result: ResultTarget
    multiple_outputs: bool = False
    result_inline_limit_bytes: int = DEFAULT_RESULT_INLINE_LIMIT_BYTES

    @classmethod
    def for_call(
        cls,
        call: SerializedCall,
        body: PayloadBody,
        result: ResultTarget,
        *,
        multiple_outputs: bool = False,
        result_inline_limit_bytes: int = DEFAULT_RESULT_INLINE_LIMIT_BYTES,
    ) -> PayloadManifest:
        return cls(
            python=call.python,
            serializer=call.serializer,
            serializer_version=call.serializer_version,
            body=body,
            result=result,
            multiple_outputs=multiple_outputs,
            result_inline_limit_bytes=result_inline_limit_bytes,
        )

    def to_json(self) -> str:
        # ASCII only (json's default): the text is safe inside a Python literal and an environment value.
        return json.dumps(
            {
                "format": FORMAT,
                "python": str(self.python),
                "serializer": self.serializer,
                "serializer_version": self.serializer_version,
                "body": self.body.to_json(),
                "result": self.result.to_json(),
                "multiple_outputs": self.multiple_outputs,
                "result_inline_limit": self.result_inline_limit_bytes,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
