"""What every operator of this provider does the way Airflow users expect, in one place.

* ``deferrable`` left out follows the deployment (:func:`~airflow_hpc_provider.config.default_deferrable`).
* ``skip_on_exit_code`` (an int or a list) marks the task skipped when the job exits with one of
  them, as with ``BashOperator`` and ``SSHOperator``.
* ``script=`` may name a file (``.sh``, ``.bash``, ``.sbatch``, ``.pbs``) on the DAG's template
  search path; it is read and rendered like any template. Only ``script=``: a ``command`` such as
  ``bash train.sh`` is a command line run on the cluster, not a file here.
* Templated fields are rendered keeping a template's final newline, then :meth:`check_rendered`
  checks the values that were templated with the same rules, and messages, as ``__init__`` checks
  literal ones at parse time.
* XCom values pushed beside the return value honour ``do_xcom_push``.
* How a job ends is one flow for every backend (:meth:`HpcOperator.finish`): a watch that passed
  the task's time limit stops the job (from a fresh thread: ``on_kill`` may run while this
  thread's event loop is busy watching) and raises ``AirflowTaskTimeout``; a lost watch says the
  job may still run; an ended job gets ONE summary line in one format (:func:`ending_summary`),
  is skipped on ``skip_on_exit_code``, and a failure carries the last lines of its output.

Errors no retry can fix are :class:`~airflow_hpc_provider.errors.FinalError`\\ s: Airflow fails
the task without using its retries, wherever they are raised (parsing, rendering, execute).
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, ClassVar, NoReturn

import jinja2
from airflow.sdk import BaseOperator, Context, get_current_context
from airflow.sdk.exceptions import AirflowSkipException, AirflowTaskTimeout
from airflow.triggers.base import BaseTrigger

from airflow_hpc_provider.config import default_deferrable
from airflow_hpc_provider.errors import JobFailedError, JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobState, JobStatus, describe_exit, format_duration
from airflow_hpc_provider.triggers.base import HpcTrigger
from airflow_hpc_provider.triggers.handover import record_deferral
from airflow_hpc_provider.watching.events import Outcome, WatchOutcome

SCRIPT_EXTENSIONS = (".sh", ".bash", ".sbatch", ".pbs")
# The states in which a job ended by exiting on its own, so its exit code is the script's word.
_EXITED = frozenset({JobState.COMPLETED, JobState.FAILED})
# How long a stop (scancel, TerminateJob, ...) may take before the task goes on without it.
STOP_TIMEOUT_S = 60.0


class StopCause(enum.StrEnum):
    """Why the provider stops a job it submitted (some systems record a reason with the stop)."""

    TIME_LIMIT = "time limit"
    """The task's execution_timeout passed while the job ran."""
    KILLED = "killed"
    """The task was killed (marked failed, the worker's own timeout): ``on_kill``."""
    REFUSED = "refused"
    """The job turned out to be something the task cannot follow (a job array it did not ask for)."""
    DONE = "done"
    """The task is over and what is left of its job goes (a throw-away EC2 instance, after every try)."""


def ending_summary(subject: str, status: JobStatus, *, signal: int | None) -> str:
    """The one summary line of every backend: ``Slurm job 1234 ended OUT_OF_MEMORY (exit 0:125)
    after 00:00:12, reason: ..., on node1, peak memory 512.0 MiB``, each part only when known.

    ``signal``: the signal that ended the command, as the backend tells it (Slurm's ``code:signal``
    pair; ``128 + N`` from a container); the shared state follows in brackets when the system's
    own word differs from it (``FAILED (exit 137) [OUT_OF_MEMORY]``)."""
    text = f"{subject} ended {status.state_words} ({describe_exit(status.exit_code, signal)})"
    if status.state.value not in (status.native_state, "COMPLETED") and len(status.native_state) > 2:
        text += f" [{status.state.value}]"
    if status.elapsed is not None:
        text += f" after {format_duration(status.elapsed)}"
    if status.reason and status.reason not in ("None", "(null)"):
        text += f", reason: {status.reason}"
    if status.nodes:
        text += f", on {status.nodes}"
    if status.max_rss_mb:
        text += f", peak memory {status.max_rss_mb:.1f} MiB"
    return text


def names_a_script_file(value: Any) -> bool:
    """``jobs/train.sbatch``: one line ending like a script file (a script's text has lines)."""
    return isinstance(value, str) and value.endswith(SCRIPT_EXTENSIONS) and "\n" not in value


def is_templated(value: Any) -> bool:
    """True for a string Jinja will change (checked after rendering instead of at parse time)."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def unless_templated(value: Any) -> Any:
    """The value to check at parse time: None (nothing to check yet) for a template."""
    return None if is_templated(value) else value


def rendered_number(value: Any) -> Any:
    """A rendered whole number (``"8"`` -> 8); an empty rendering means "not given"."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.isdigit():
            return int(text)
    return value


def rendered_text(value: Any) -> Any:
    """A rendered name or size; an empty rendering means "not given" (the connection's default)."""
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


def exit_codes(value: int | Iterable[int] | None, argument: str = "skip_on_exit_code") -> frozenset[int]:
    """``99``, ``[99, 100]`` or None -> a set of exit codes; anything else is an error at parse time."""
    if value is None:
        return frozenset()
    codes = [value] if isinstance(value, int) else list(value) if isinstance(value, Iterable) else [value]
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            raise JobSpecError(f"{argument}={value!r}: give an exit code (0-255) or a list of them")
    return frozenset(codes)


class HpcOperator(BaseOperator):
    """Base of this provider's operators: the Airflow conventions listed in the module docstring."""

    template_ext = SCRIPT_EXTENSIONS

    def __init__(
        self,
        *,
        deferrable: bool | None = None,
        skip_on_exit_code: int | Iterable[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.skip_on_exit_code = exit_codes(skip_on_exit_code)

    # -- templating --------------------------------------------------------------------------------

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        # Jinja drops a template's final newline by default; an env value or a script must arrive
        # exactly as written, so render with it kept (an overlay: the DAG's own env is untouched).
        env = jinja_env or self.get_template_env(self.dag if self.has_dag() else None)
        super().render_template_fields(context, env.overlay(keep_trailing_newline=True))
        self.check_rendered()

    def check_rendered(self) -> None:
        """Check the arguments that were templates, now that they have values (a subclass says which)."""

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        script = getattr(self, "script", None)
        if (
            isinstance(content, str)
            and content.endswith(SCRIPT_EXTENSIONS)
            and not (content is script and names_a_script_file(script))
        ):
            # Only script= names a file; "bash train.sh" elsewhere is text for the cluster.
            env = jinja_env or self.get_template_env()
            return self._render(env.from_string(content), context)
        if isinstance(script, str) and content is script and names_a_script_file(script):
            env = jinja_env or self.get_template_env()
            try:
                env.get_template(script)
            except jinja2.TemplateNotFound:
                searched = getattr(env.loader, "searchpath", None)
                raise JobSpecError(
                    f"script={script!r} ends like a script file, but no such file is on the DAG's template search "
                    f"path ({', '.join(searched) if searched else 'the DAG folder'}); give the path relative to "
                    "the DAG file or to a template_searchpath, or pass the script's text"
                ) from None
        return super().render_template(content, context, jinja_env, seen_oids)

    def resolve_template_files(self) -> None:
        # Airflow reads every template field ending in template_ext as a file at parse time; here
        # only script= may name one (a command or a setup line like "source env.sh" stays text).
        script = getattr(self, "script", None)
        if isinstance(script, str) and names_a_script_file(script):
            env = self.get_template_env()
            # A missing file is said in words when the task renders (render_template).
            with contextlib.suppress(jinja2.TemplateNotFound):
                setattr(self, "script", env.loader.get_source(env, script)[0] if env.loader else script)  # noqa: B010
        self.prepare_template()

    def trigger_deadline(self) -> float | None:
        """Epoch seconds at which the task's ``execution_timeout``, counted from now, passes: a
        deferred task's trigger fires ``timeout`` then, since Airflow's own timeout cannot reach a
        task that waits in the triggerer. None without a timeout."""
        timeout = self.execution_timeout
        return None if timeout is None else time.time() + timeout.total_seconds()

    def defer(
        self,
        *,
        trigger: BaseTrigger,
        method_name: str,
        kwargs: dict[str, Any] | None = None,
        timeout: timedelta | int | float | None = None,
    ) -> NoReturn:
        if isinstance(trigger, HpcTrigger):
            # What lets the trigger's on_kill tell a handover from a user's action (triggers/handover.py).
            try:
                context = get_current_context()
            except RuntimeError:
                # Called outside Airflow's task runner (execute() called directly): no triggerer will
                # run this trigger for a task instance, so there is no handover to tell apart.
                context = None
            if context is not None:
                record_deferral(context["ti"])
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    @staticmethod
    def job_key(context: Context) -> JobKey:
        """The key this try's job carries, by which a retry finds (adopts) it: the task instance
        (dag, task, run, map index) and its try."""
        ti = context["ti"]
        return JobKey.for_task_instance(
            ti.dag_id, ti.task_id, ti.run_id, -1 if ti.map_index is None else ti.map_index, ti.try_number
        )

    # -- outcomes ----------------------------------------------------------------------------------

    def push_xcom(self, context: Context, key: str, value: Any) -> None:
        """Push an XCom beside the return value, unless the task says ``do_xcom_push=False``."""
        if self.do_xcom_push:
            context["ti"].xcom_push(key=key, value=value)

    def skip_if_asked(self, status: JobStatus, what: str) -> None:
        """Raise AirflowSkipException when the job exited on its own with one of ``skip_on_exit_code``."""
        if status.exit_code in self.skip_on_exit_code and status.state in _EXITED and not status.signal:
            raise AirflowSkipException(f"{what} exited {status.exit_code}, which skip_on_exit_code marks as skipped")

    # -- mapped tasks ------------------------------------------------------------------------------

    @staticmethod
    def array_arguments_check(task_id: str, array: Any, throttle: Any, window_s: Any) -> Any:
        """Checks ``array``, ``array_throttle`` and ``array_window`` where an operator runs mapped
        instances as array elements (operators/arrays.py); an operator without arrays has none."""

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Checks the array arguments when the DAG is parsed: a mapped task's operator is only
        built when each map index runs, hours later."""
        task_id = str(kwargs.get("task_id", cls.__name__))
        cls.array_arguments_check(
            task_id, kwargs.get("array"), kwargs.get("array_throttle"), kwargs.get("array_window")
        )
        return super().partial(**kwargs)

    # -- how a job ends: one flow for every backend ------------------------------------------------

    # What stop_job does to a job, as (doing, done): ("cancelling", "cancelled").
    stop_words: ClassVar[tuple[str, str]] = ("cancelling", "cancelled")
    tail_heading: ClassVar[str] = "last lines of the job's output"
    job_word: ClassVar[str] = "job"  # what the job is called in a sentence: "the tenant was not stopped"

    @property
    def job_noun(self) -> str:
        """The words before a job's id in every message: ``Slurm job`` (1234)."""
        return "job"

    def stop_job(self, job_id: str, cause: StopCause) -> str:
        """Stop the job now (scancel, qdel, TerminateJob, ...); return what to log. A subclass says how."""
        raise NotImplementedError

    def failure_tail(self, payload: Mapping[str, Any]) -> str:
        """The last lines of a failed job's output, for the error (empty when they cannot be read)."""
        return ""

    def exit_signal(self, status: JobStatus) -> int | None:
        """The signal half of the ``code:signal`` pair schedulers report (``exit 3:0``); a backend
        whose exit codes carry signals as ``128 + N`` (containers) reads it from the code instead."""
        return status.signal or 0

    def summary(self, status: JobStatus) -> str:
        return ending_summary(f"{self.job_noun} {status.job_id}", status, signal=self.exit_signal(status))

    def stop_from_a_fresh_thread(self, job_id: str, cause: StopCause) -> BaseException | None:
        """Run :meth:`stop_job`, bounded, in a thread of its own: ``on_kill`` may run while this
        thread's event loop is busy watching. Returns the error, if it failed (also logged)."""
        errors: list[BaseException] = []
        said: list[str] = []

        def run() -> None:
            try:
                said.append(self.stop_job(job_id, cause))
            except BaseException as error:
                errors.append(error)

        worker = threading.Thread(target=run, name=f"hpc-stop-{job_id}")
        worker.start()
        worker.join(timeout=STOP_TIMEOUT_S)
        if worker.is_alive():
            errors.append(TimeoutError(f"no answer within {STOP_TIMEOUT_S:.0f}s"))
        if errors:
            self.log.error("could not stop %s %s: %s", self.job_noun, job_id, errors[0])
            return errors[0]
        self.log.info(
            "%s", said[0] if said and said[0] else f"{self.stop_words[1].capitalize()} {self.job_noun} {job_id}"
        )
        return None

    def finish(
        self,
        outcome: WatchOutcome,
        payload: Mapping[str, Any],
        *,
        where: str | None = None,
        owned: bool = True,
        already_stopped: bool = False,
    ) -> str:
        """The end of every task of this provider: the job's id (the task's XCom), or the right exception.

        ``where``: the connection named in messages (None: the job's id says enough, as Batch's
        and EC2's do); ``owned``: False when the task only watches a job it did not submit, which
        it then never stops; ``already_stopped``: the job is gone whatever happened (an EC2
        instance is terminated at the end of every watch)."""
        what = f"{self.job_noun} {outcome.job_id}"
        named = what if where is None else f"{what} on {where}"
        doing, done = self.stop_words
        if outcome.kind is Outcome.TIMEOUT:
            if not owned:
                raise AirflowTaskTimeout(f"{named}: {outcome.message} (left running)")
            if already_stopped:
                raise AirflowTaskTimeout(f"{named} passed the task's time limit and was {done}")
            self.log.error("%s passed the task's time limit: %s it", what, doing)
            error = self.stop_from_a_fresh_thread(outcome.job_id, StopCause.TIME_LIMIT)
            if error is not None:
                raise AirflowTaskTimeout(f"{named} passed the task's time limit and could not be {done}: {error}")
            raise AirflowTaskTimeout(f"{named} was {done}: {outcome.message}")
        if outcome.kind is Outcome.ERROR or outcome.status is None:
            if already_stopped:
                raise JobFailedError(f"{named}: {outcome.message}; it was {done}", None)
            raise JobFailedError(
                f"lost track of {named}: {outcome.message} "
                f"(the {self.job_word} was not {done} and may still be running)",
                None,
            )
        status = outcome.status
        message = self.summary(status)
        self.log.info("%s", message)
        self.skip_if_asked(status, what)
        if status.state.is_success:
            return outcome.job_id
        tail = self.failure_tail(payload)
        if tail.strip():
            message += f"\n{self.tail_heading}:\n{tail.rstrip()}"
        raise JobFailedError(message, status)
