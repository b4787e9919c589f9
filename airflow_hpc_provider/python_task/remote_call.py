"""What every decorated Python task shares, wherever its job runs (an SSH cluster, AWS Batch).

:class:`RemotePythonCall` sits in front of an operator and changes only what is submitted and what
the end means. It owns the arguments every such task takes (``python``, ``cleanup``,
``result_inline_limit_bytes``), the serialization of the call (before anything is submitted, so an
argument that cannot be pickled fails the task with nothing submitted), and the end: the
operator's own ``execute_complete`` decides how the job ended, then the result document (named by
the job id of the event, so a retry that adopted an earlier try's job finds it) becomes the return
value or the remote exception with its traceback, and what was read is deleted.

Where the payload and the result live is the subclass's: :meth:`fetch_result`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException, AirflowTaskTimeout
from airflow.triggers.base import TriggerEvent

from airflow_hpc_provider.errors import JobFailedError, JobSpecError, RemoteResultError
from airflow_hpc_provider.operators.base import HpcOperator
from airflow_hpc_provider.python_task.cleanup import CleanupPolicy
from airflow_hpc_provider.python_task.launch import check_python_command
from airflow_hpc_provider.python_task.manifest import DEFAULT_RESULT_INLINE_LIMIT_BYTES
from airflow_hpc_provider.python_task.results import Referencer, ResultDocument, return_value
from airflow_hpc_provider.python_task.serializer import SerializedCall, load_serializer, serialize_call
from airflow_hpc_provider.watching.events import WatchOutcome

# What __init__ of the operator gets for command=: replaced by the bootstrap before submission.
COMMAND_PLACEHOLDER = ":"


class RemotePythonCall(HpcOperator):
    """Mixin: run ``python_callable(*op_args, **op_kwargs)`` as the operator's job.

    :param python: the interpreter that runs the function (a name on PATH or a path).
    :param cleanup: ``"delete"`` (default): the stored payload and the result document are deleted
        once read; ``"keep"``: both stay. Values that stayed remote are never deleted.
    :param result_inline_limit_bytes: a returned value (each key's with ``multiple_outputs``) larger
        than this, pickled, stays remote and XCom holds a reference to it.
    """

    # Set by DecoratedOperator (a later base of the concrete class).
    python_callable: Callable[..., Any]
    op_args: Collection[Any]
    op_kwargs: Mapping[str, Any]

    def __init__(
        self,
        *,
        python: str = "python3",
        cleanup: str = CleanupPolicy.DELETE.value,
        result_inline_limit_bytes: int = DEFAULT_RESULT_INLINE_LIMIT_BYTES,
        **kwargs: Any,
    ) -> None:
        for name in ("command", "script"):
            if kwargs.get(name) is not None:
                raise JobSpecError(f"{name}= is not for a decorated function: the function is what the job runs")
        try:
            self.python = check_python_command(python)
            self.cleanup = CleanupPolicy.parse(cleanup)
        except ValueError as error:
            raise JobSpecError(str(error)) from None
        if isinstance(result_inline_limit_bytes, bool) or not isinstance(result_inline_limit_bytes, int):
            raise JobSpecError(f"result_inline_limit_bytes={result_inline_limit_bytes!r}: give a number of bytes")
        self.result_inline_limit_bytes = result_inline_limit_bytes
        kwargs["command"] = COMMAND_PLACEHOLDER
        super().__init__(**kwargs)

    def serialized_call(self) -> SerializedCall:
        """The call, pickled on the worker; an argument that cannot be pickled is named here."""
        return serialize_call(
            self.python_callable, tuple(self.op_args), dict(self.op_kwargs), serializer=load_serializer()
        )

    def callable_name(self) -> str:
        return str(getattr(self.python_callable, "__qualname__", repr(self.python_callable)))

    # -- where the subclass keeps things -------------------------------------------------------------

    def fetch_result(self, context: Context, job_id: str, *, read: bool) -> tuple[str, bytes | None]:
        """Where job ``job_id`` wrote its result document and (with ``read``) its bytes, or ``None``
        when it wrote none; then delete what the cleanup policy says. A failure to delete is a
        warning: the outcome matters more than the files."""
        raise NotImplementedError

    def result_referencer(self, document: ResultDocument) -> Referencer:
        """How XCom names a value that stayed remote."""
        raise NotImplementedError

    def job_label(self, job_id: str) -> str:
        raise NotImplementedError

    # -- after the job ended -------------------------------------------------------------------------

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> Any:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        job_id = WatchOutcome.from_dict(payload).job_id
        failure: JobFailedError | None = None
        try:
            # The operator's own (a later base of the concrete class): how the job ended.
            super().execute_complete(context, event)  # type: ignore[misc]
        except JobFailedError as error:
            if error.status is None:  # track lost: the job may still run, and need its payload
                raise
            failure = error
        except (AirflowTaskTimeout, AirflowSkipException):
            self.fetch_result(context, job_id, read=False)
            raise
        return self._value(self.fetch_result(context, job_id, read=True), job_id, failure)

    def _value(self, read: tuple[str, bytes | None], job_id: str, failure: JobFailedError | None) -> Any:
        where, text = read
        if text is None:
            if failure is not None:
                raise failure
            raise RemoteResultError(f"{self.job_label(job_id)} ended without writing its result to {where}", None)
        document = ResultDocument.parse(text, where)
        # A raised function or a bootstrap that could not run it: its own error, not the exit code's.
        value = return_value(
            document,
            serializer=load_serializer(),
            multiple_outputs=bool(self.multiple_outputs),
            reference=self.result_referencer(document),
            status=failure.status if failure is not None else None,
        )
        if failure is not None:  # the function returned, yet the job failed after (killed, out of memory)
            raise failure
        return value
