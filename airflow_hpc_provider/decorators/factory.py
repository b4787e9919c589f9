"""What every ``@task.<scheduler>`` decorator of this provider is: the operator class it makes, wrapped.

Each decorator module declares its operator class (which operator it sits in front of, its name in
the UI) and gets its decorator from :func:`python_task_decorator`; nothing else differs between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

# How the UI shows a decorated task's rendered fields: the function's arguments as Python.
PYTHON_CALL_RENDERERS: dict[str, str] = {"op_args": "py", "op_kwargs": "py", "env": "json"}


def python_task_decorator(operator: type[DecoratedOperator], example: str) -> Callable[..., TaskDecorator]:
    """The decorator making ``operator`` tasks of decorated functions; ``example`` shows it in use."""

    def decorator(
        python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None, **kwargs: Any
    ) -> TaskDecorator:
        return task_decorator_factory(
            python_callable=python_callable,
            multiple_outputs=multiple_outputs,
            decorated_operator_class=operator,
            **kwargs,
        )

    decorator.__doc__ = f"Run the decorated function as the job of a {operator.__name__}, e.g. ``{example}``."
    return decorator
