"""What an SSH cluster operator does with ``git=`` when its task starts: pin, check out, log, XCom.

The operator calls :func:`pinned_working_dir` once, before it renders the job; it returns the
directory the job starts in (inside the checkout) and is a no-op for a task without ``git=``.
See :mod:`airflow_hpc_provider.git_pin` for where the pin lives and why.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_hpc_provider.git_pin import Checkout, CheckoutPlace, GitSource
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.hooks.worker_link import on_cluster

GIT_SHA_XCOM_KEY = "git_sha"


def _check_out(target: SshTarget, source: GitSource, place: CheckoutPlace) -> Checkout:
    """Pin and check out over the worker process's one connection to the cluster (worker_link)."""
    from airflow_hpc_provider.hooks.git_checkout import DeployKey, check_out

    # Read here, in the task's thread: the connection lookup is the task runner's to make.
    key = DeployKey.from_connection(source.key_conn_id) if source.key_conn_id else None

    async def work(transport: SshTransport) -> Checkout:
        checkout, _ = await check_out(transport, source, place, key)
        return checkout

    return on_cluster(target, work)


def pinned_working_dir(
    operator: Any, context: Context, target: SshTarget, log_dir: str, working_dir: str | None
) -> str | None:
    """The job's working directory: ``working_dir`` unchanged without ``git=``; with it, the
    checkout of the pinned commit (its ``path``), a relative ``working_dir`` resolved inside it."""
    source: GitSource | None = getattr(operator, "git_source", None)
    if source is None:
        return working_dir
    ti = context["ti"]
    place = CheckoutPlace(log_dir=log_dir, pin_digest=source.pin_digest(ti.dag_id, ti.run_id, ti.task_id))
    checkout = _check_out(target, source, place)
    operator.log.info(
        "Git: %s at %s is commit %s (%s); checkout %s (%s)",
        source.repo,
        source.ref,
        checkout.sha,
        "pinned when an earlier try or map index of this task in this DAG run started"
        if checkout.pinned_earlier
        else "resolved now, at this task's start",
        checkout.directory,
        "made now" if checkout.made else "reused",
    )
    operator.push_xcom(context, GIT_SHA_XCOM_KEY, checkout.sha)
    return checkout.working_dir(source, working_dir)


class GitPinnedPartial:
    """Mixed into the operators that take ``git=``: checks it when given to ``.partial()``.

    A mapped task's operator is only built when each map index runs, so the constructor's check
    would come hours late; ``.partial()`` runs when the DAG is parsed.
    """

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        GitSource.parse(kwargs.get("git"), str(kwargs.get("task_id", cls.__name__)))
        return super().partial(**kwargs)  # type: ignore[misc]
