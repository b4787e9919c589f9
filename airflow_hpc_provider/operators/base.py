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

Errors no retry can fix are :class:`~airflow_hpc_provider.errors.FinalError`\\ s: Airflow fails
the task without using its retries, wherever they are raised (parsing, rendering, execute).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import jinja2
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowSkipException

from airflow_hpc_provider.config import default_deferrable
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobState, JobStatus

SCRIPT_EXTENSIONS = (".sh", ".bash", ".sbatch", ".pbs")
# The states in which a job ended by exiting on its own, so its exit code is the script's word.
_EXITED = frozenset({JobState.COMPLETED, JobState.FAILED})


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

    # -- outcomes ----------------------------------------------------------------------------------

    def push_xcom(self, context: Context, key: str, value: Any) -> None:
        """Push an XCom beside the return value, unless the task says ``do_xcom_push=False``."""
        if self.do_xcom_push:
            context["ti"].xcom_push(key=key, value=value)

    def skip_if_asked(self, status: JobStatus, what: str) -> None:
        """Raise AirflowSkipException when the job exited on its own with one of ``skip_on_exit_code``."""
        if status.exit_code in self.skip_on_exit_code and status.state in _EXITED and not status.signal:
            raise AirflowSkipException(f"{what} exited {status.exit_code}, which skip_on_exit_code marks as skipped")
