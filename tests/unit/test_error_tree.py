"""One exception tree, drawn once: every exception the package defines lives in errors.py, derives
from HpcProviderError (so one ``except`` catches everything the provider raises on purpose), and
appears in the tree errors.py's docstring draws."""

from __future__ import annotations

import pytest

from airflow_hpc_provider import errors
from airflow_hpc_provider.jobs import JobState
from tests.unit.package_modules import defined_classes

# Programs the package ships as text to run elsewhere (on the cluster or in a container): they must
# stand alone, without Airflow or this package, so their internal exceptions cannot join the tree.
SHIPPED_PROGRAMS = {"airflow_hpc_provider.python_task.remote_bootstrap"}
EXCEPTIONS = [cls for cls in defined_classes(BaseException) if cls.__module__ not in SHIPPED_PROGRAMS]


def test_the_walk_finds_the_package_exceptions() -> None:
    assert {errors.JobFailedError, errors.Throttled, errors.AllocationError} <= set(EXCEPTIONS)


@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda cls: cls.__qualname__)
def test_every_exception_is_defined_in_errors_and_drawn_in_its_tree(error: type[BaseException]) -> None:
    assert error.__module__ == errors.__name__, f"move {error.__qualname__} into errors.py"
    if error is errors.FinalError:  # the mixin that marks errors no retry fixes, not a branch of the tree
        return
    assert issubclass(error, errors.HpcProviderError)
    assert f" {error.__name__}" in (errors.__doc__ or ""), f"draw {error.__name__} in errors.py's tree"


def test_the_tree_draws_each_error_under_its_parent() -> None:
    drawn: dict[int, str] = {}
    for line in (errors.__doc__ or "").splitlines():
        name = line.lstrip(" │├└─").split(" ")[0].rstrip("*")
        if not hasattr(errors, name):
            continue
        depth = (len(line) - len(line.lstrip(" │├└─"))) // 4
        drawn[depth] = name
        if depth > 1:
            parent = getattr(errors, drawn[depth - 1])
            assert parent in getattr(errors, name).__bases__, f"{name} is drawn under {parent.__name__}"


@pytest.mark.parametrize("state", list(JobState), ids=lambda state: state.name)
def test_every_job_state_says_what_it_means(state: JobState) -> None:
    assert state.__doc__ and state.__doc__ != JobState.__doc__ and len(state.__doc__) > 20
    assert JobState(state.value) is state and state.value == state.name
