"""Extra directives of PBS and Grid Engine tasks: each one line, never one the provider writes itself."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_qstat, sge
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobSpec

RENDERERS: dict[str, Callable[[JobSpec], list[str]]] = {
    "pbs": lambda spec: pbs.resource_options(spec, pbs_qstat.PbsFlavour.TORQUE),
    "sge": lambda spec: sge.resource_options(spec),
}


def spec(*directives: str) -> JobSpec:
    return JobSpec(command="true", job_name="x", extra_directives=directives)


@pytest.mark.parametrize("scheduler", RENDERERS)
def test_an_extra_directive_is_passed_on_as_written(scheduler: str) -> None:
    assert RENDERERS[scheduler](spec("-m abe"))[-1] == "-m abe"


@pytest.mark.parametrize("scheduler", RENDERERS)
@pytest.mark.parametrize("bad", ["-m a\n-N other", "-m a\r", "-m a\0"])
def test_an_extra_directive_over_several_lines_is_refused(scheduler: str, bad: str) -> None:
    with pytest.raises(JobSpecError, match="must be a single line"):
        RENDERERS[scheduler](spec(bad))


@pytest.mark.parametrize(("scheduler", "option"), [("pbs", "-N"), ("pbs", "-o"), ("sge", "-t"), ("sge", "-wd")])
def test_an_extra_directive_setting_what_the_provider_sets_is_refused(scheduler: str, option: str) -> None:
    with pytest.raises(JobSpecError, match="are set by the provider"):
        RENDERERS[scheduler](spec(f"{option} value"))
