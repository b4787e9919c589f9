"""The result document a job wrote, turned into the task's return value (and so its XComs).

Pure: the caller fetched the document (over SSH, from S3) and says how to name a value that stayed
remote. Three outcomes:

* the function returned: its value, unpickled here, is the task's return value. With
  ``multiple_outputs`` the bootstrap wrote one record per key of the returned dict; the value is
  that dict again, and Airflow's task runner pushes each key as its own XCom beside
  ``return_value``, as for any ``@task`` (its rules are checked here first, with its messages, so
  they hold for values that stay remote too);
* a value past the inline limit stayed remote (a file on the cluster, an S3 object): in its place
  the XCom holds a :class:`RemoteResult` reference, as a plain JSON object, that
  :func:`RemoteResult.from_xcom` reads back and the backend's loader fetches;
* the function raised: :class:`RemoteFunctionError` with the remote type, message and traceback;
  the bootstrap could not run it: :class:`RemoteResultError` with the bootstrap's reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.errors import RemoteFunctionError, RemoteResultError
from airflow_hpc_provider.jobs import JobStatus
from airflow_hpc_provider.python_task.codec import Compression, decode_body
from airflow_hpc_provider.python_task.serializer import Serializer

FORMAT = 1
REFERENCE_KEY = "airflow_hpc_remote_result"


@dataclass(frozen=True)
class RemoteResult:
    """A return value that stayed where the job wrote it; what XCom holds in its place.

    :param backend: ``"cluster"`` (``location`` is an absolute path on the login node of the
        connection ``conn_id``) or ``"s3"`` (``location`` is ``s3://bucket/key``, read with the
        ``aws`` connection ``conn_id``).
    :param size_bytes: the pickled value's size before compression.
    :param sha256: of the stored bytes (compressed when ``compression`` is ``"gzip"``).
    :param type_name: the value's type, as the remote side named it.
    :param serializer: what pickled it; ``python`` is the remote major.minor.micro (load it under the
        same major.minor).
    """

    backend: str
    location: str
    conn_id: str | None
    size_bytes: int
    sha256: str
    compression: str
    type_name: str
    serializer: str
    python: str

    def to_xcom(self) -> dict[str, Any]:
        return {
            REFERENCE_KEY: {
                "backend": self.backend,
                "location": self.location,
                "conn_id": self.conn_id,
                "size_bytes": self.size_bytes,
                "sha256": self.sha256,
                "compression": self.compression,
                "type": self.type_name,
                "serializer": self.serializer,
                "python": self.python,
            }
        }

    @classmethod
    def from_xcom(cls, value: Any) -> RemoteResult | None:
        """The reference an XCom value holds, or ``None`` when it holds an ordinary value."""
        if not isinstance(value, Mapping) or set(value) != {REFERENCE_KEY}:
            return None
        fields = value[REFERENCE_KEY]
        return cls(
            backend=str(fields["backend"]),
            location=str(fields["location"]),
            conn_id=fields.get("conn_id"),
            size_bytes=int(fields["size_bytes"]),
            sha256=str(fields["sha256"]),
            compression=str(fields["compression"]),
            type_name=str(fields["type"]),
            serializer=str(fields["serializer"]),
            python=str(fields["python"]),
        )

    def decode(self, stored: bytes, serializer: Serializer) -> Any:
        """The value, from the bytes a loader fetched; refuses bytes that are not the ones written."""
        if hashlib.sha256(stored).hexdigest() != self.sha256:
            raise RemoteResultError(f"{self.location} is not the result the job wrote (SHA-256 differs)", None)
        return serializer.loads(decode_body(Compression(self.compression), stored))


@dataclass(frozen=True)
class ResultDocument:
    """What the bootstrap wrote, as read (``status``: returned, raised or unusable)."""

    status: str
    exit_status: int | None
    python: str
    executable: str
    serializer: str
    fields: Mapping[str, Any]

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> ResultDocument:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this worker reads {FORMAT}")
            return cls(
                status=str(data["status"]),
                exit_status=data.get("exit_status"),
                python=str(data.get("python", "")),
                executable=str(data.get("executable", "")),
                serializer=str(data.get("serializer", "")),
                fields=data,
            )
        except (ValueError, KeyError, AttributeError) as error:
            raise RemoteResultError(f"the result at {where} cannot be read: {error}", None) from None

    @property
    def stored_locations(self) -> list[Mapping[str, Any]]:
        """Where the values that stayed remote are (``{"path": ...}`` or ``{"bucket": ..., "key": ...}``)."""
        records = [self.fields["value"]] if "value" in self.fields else list(self.fields.get("values", {}).values())
        return [record["stored"] for record in records if "stored" in record]


# Given a value's record and its stored location, the reference XCom will hold (the backend knows how).
Referencer = Callable[[Mapping[str, Any], Mapping[str, Any]], RemoteResult]


def referencer(
    document: ResultDocument, backend: str, conn_id: str | None, location: Callable[[Mapping[str, Any]], str]
) -> Referencer:
    """How XCom names the values a job left where it ran: ``location`` says where one is stored
    (an absolute path on the cluster, an ``s3://`` URI) from what the bootstrap recorded."""

    def make(record: Mapping[str, Any], stored: Mapping[str, Any]) -> RemoteResult:
        return RemoteResult(
            backend=backend,
            location=location(stored),
            conn_id=conn_id,
            size_bytes=int(record["size"]),
            sha256=str(record["sha256"]),
            compression=str(record["compression"]),
            type_name=str(record["type"]),
            serializer=document.serializer,
            python=document.python,
        )

    return make


def return_value(
    document: ResultDocument,
    *,
    serializer: Serializer,
    multiple_outputs: bool,
    reference: Referencer,
    status: JobStatus | None = None,
) -> Any:
    """The task's return value from the document, or the remote failure raised with its traceback."""
    if document.status == "raised":
        error = document.fields.get("error") or {}
        raise RemoteFunctionError(
            str(error.get("type", "an exception")),
            str(error.get("message", "")),
            str(error.get("traceback", "")),
            status,
        )
    if document.status == "unusable":
        raise RemoteResultError(
            f"the job's Python ({document.executable}, {document.python}) could not run the function: "
            f"{document.fields.get('message', 'no reason given')}",
            status,
        )
    if document.status != "returned":
        raise RemoteResultError(f"the result has status {document.status!r}, unknown to this worker", status)

    def value_of(record: Mapping[str, Any]) -> Any:
        if "stored" in record:
            return reference(record, record["stored"]).to_xcom()
        data = base64.b64decode(record["inline"])
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise RemoteResultError("an inline result value does not have the SHA-256 it was written with", status)
        return serializer.loads(decode_body(Compression(record["compression"]), data))

    if "values" in document.fields:  # multiple_outputs, and the function returned a mapping of str keys
        return {key: value_of(record) for key, record in document.fields["values"].items()}
    if multiple_outputs and document.fields.get("multiple_outputs_error"):
        # Airflow's task runner raises TypeError with these words; the bootstrap wrote them remotely,
        # so they hold for a value that stayed remote too.
        raise TypeError(str(document.fields["multiple_outputs_error"]))
    return value_of(document.fields["value"])
