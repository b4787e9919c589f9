"""What DAG authors write for resources, checked at parse time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_hpc_provider.errors import HpcProviderError, JobSpecError
from airflow_hpc_provider.jobs import Resources
from airflow_hpc_provider.resources import (
    build_resources,
    check_env_names,
    check_name,
    check_positive,
    check_single_line,
    parse_memory_mb,
    parse_time_limit,
)

# --- memory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "megabytes"),
    [
        ("4G", 4096),
        ("512M", 512),
        (4096, 4096),
        ("2GB", 2048),
        ("2GiB", 2048),
        ("1.5G", 1536),
        ("1T", 1024 * 1024),
        ("4g", 4096),
        (" 64M ", 64),
        ("100", 100),
        ("2048K", 2),
        ("1K", 1),  # never rounds down to nothing
    ],
)
def test_memory_in_any_usual_form_becomes_mebibytes(value: int | str, megabytes: int) -> None:
    assert parse_memory_mb(value) == megabytes


def test_no_memory_means_the_cluster_default() -> None:
    assert parse_memory_mb(None) is None


@pytest.mark.parametrize("value", ["12XB", "4 gigs", "G", "", "-4G", "4G;rm -rf ~", "4G\n#SBATCH --x"])
def test_a_memory_size_that_is_not_one_is_rejected_naming_the_argument(value: str) -> None:
    with pytest.raises(JobSpecError, match=r"memory="):
        parse_memory_mb(value)


@pytest.mark.parametrize("value", [0, -1, "0", "0M", "0.0G"])
def test_zero_or_negative_memory_is_rejected(value: int | str) -> None:
    with pytest.raises(JobSpecError, match="more than zero"):
        parse_memory_mb(value)


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_taken_for_a_memory_size(value: bool) -> None:
    with pytest.raises(JobSpecError, match="MiB"):
        parse_memory_mb(value)


def test_a_memory_error_names_the_argument_it_was_given_as() -> None:
    with pytest.raises(JobSpecError, match=r"mem_per_cpu='lots'"):
        parse_memory_mb("lots", argument="mem_per_cpu")


def test_spec_errors_are_value_errors_and_provider_errors() -> None:
    with pytest.raises(ValueError):
        parse_memory_mb("12XB")
    with pytest.raises(HpcProviderError):
        parse_memory_mb("12XB")


# --- time limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", timedelta(minutes=30)),
        ("30:15", timedelta(minutes=30, seconds=15)),
        ("2:30:15", timedelta(hours=2, minutes=30, seconds=15)),
        ("1-12", timedelta(days=1, hours=12)),
        ("1-12:30", timedelta(days=1, hours=12, minutes=30)),
        ("1-12:30:15", timedelta(days=1, hours=12, minutes=30, seconds=15)),
        (" 1-00:00:00 ", timedelta(days=1)),
        ("90", timedelta(minutes=90)),
        (45, timedelta(minutes=45)),
        (timedelta(hours=2), timedelta(hours=2)),
        (timedelta(seconds=1), timedelta(seconds=1)),
    ],
)
def test_a_time_limit_in_every_slurm_format_becomes_a_timedelta(
    value: str | int | timedelta, expected: timedelta
) -> None:
    assert parse_time_limit(value) == expected


def test_no_time_limit_means_the_partition_default() -> None:
    assert parse_time_limit(None) is None


@pytest.mark.parametrize(
    "value", [timedelta(0), timedelta(seconds=-1), timedelta(days=-1), 0, -5, "0", "0:00", "0-00:00:00"]
)
def test_a_zero_or_negative_time_limit_is_rejected(value: str | int | timedelta) -> None:
    with pytest.raises(JobSpecError, match="positive duration"):
        parse_time_limit(value)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "1:2:3:4", "1-", "-1", "1-2-3", "1h", "1.5", "UNLIMITED", "12:00:00\n#SBATCH --x", "1 - 12"],
)
def test_a_time_limit_string_slurm_would_not_accept_is_rejected(value: str) -> None:
    with pytest.raises(JobSpecError, match="is not a time limit"):
        parse_time_limit(value)


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_taken_for_a_time_limit(value: bool) -> None:
    with pytest.raises(JobSpecError, match="time_limit="):
        parse_time_limit(value)


# --- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["debug", "long", "gpu-a100", "my_acct.2", "x+y"])
def test_scheduler_names_of_letters_digits_and_punctuation_are_kept(value: str) -> None:
    assert check_name(value, "partition") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "my partition",
        "debug\n",
        "debug\n#SBATCH --account=other",
        "de\rbug",
        "debug;rm",
        "$(id)",
        "déboggage",
        "debug,long",  # a list only where a list is allowed
    ],
)
def test_a_name_with_spaces_newlines_or_shell_characters_is_rejected(value: str) -> None:
    with pytest.raises(JobSpecError, match="account="):
        check_name(value, "account")


def test_a_partition_may_be_a_comma_separated_list_but_not_an_open_one() -> None:
    assert check_name("debug,long", "partition", allow_list=True) == "debug,long"
    for bad in ("debug,", ",long", "debug,,long", "debug, long", "debug,long\n"):
        with pytest.raises(JobSpecError):
            check_name(bad, "partition", allow_list=True)


def test_a_name_that_is_not_a_string_is_rejected() -> None:
    with pytest.raises(JobSpecError):
        check_name(7, "partition")  # type: ignore[arg-type]


def test_no_name_means_the_default() -> None:
    assert check_name(None, "partition") is None


@pytest.mark.parametrize("names", [("HOME_DIR", "_x", "A1"), ()])
def test_environment_variable_names_are_kept_in_order(names: tuple[str, ...]) -> None:
    assert check_env_names(list(names)) == names


@pytest.mark.parametrize("name", ["1ABC", "MY-VAR", "A B", "TOKEN\n", "X=1", "", "$X"])
def test_an_environment_name_the_shell_would_not_accept_is_rejected(name: str) -> None:
    with pytest.raises(JobSpecError, match="env name"):
        check_env_names([name])


@pytest.mark.parametrize("value", ["one\ntwo", "cr\r", "nul\0"])
def test_a_value_that_must_be_one_line_refuses_line_breaks_and_nul(value: str) -> None:
    with pytest.raises(JobSpecError, match="single line"):
        check_single_line(value, "job_name")


def test_a_single_line_is_returned_unchanged() -> None:
    assert check_single_line("it's $(fine) here", "job_name") == "it's $(fine) here"


# --- counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 0, True, 2.0, "4"])
def test_a_cpu_count_below_one_or_not_a_whole_number_is_rejected(value: object) -> None:
    with pytest.raises(JobSpecError, match=r"cpus=.* at least 1"):
        check_positive(value, "cpus")  # type: ignore[arg-type]


def test_a_positive_count_is_kept_and_none_means_default() -> None:
    assert check_positive(1, "nodes") == 1
    assert check_positive(None, "nodes") is None


# --- build_resources --------------------------------------------------------------------------------------


def test_build_resources_converts_every_field() -> None:
    assert build_resources(
        partition="debug,long",
        account="myacct",
        nodes=2,
        cpus=4,
        memory="4G",
        time_limit="1-12:00:00",
        gpus=1,
        gres="gpu:a100:2",
    ) == Resources(
        partition="debug,long",
        account="myacct",
        nodes=2,
        cpus=4,
        memory_mb=4096,
        time_limit=timedelta(days=1, hours=12),
        gpus=1,
        gres="gpu:a100:2",
    )


def test_build_resources_with_nothing_asks_for_the_cluster_defaults() -> None:
    assert build_resources() == Resources()


@pytest.mark.parametrize("gres", ["gpu a100", "gpu:1\n", "gpu:1;id", ""])
def test_a_gres_request_with_spaces_or_shell_characters_is_rejected(gres: str) -> None:
    with pytest.raises(JobSpecError, match="gres="):
        build_resources(gres=gres)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"cpus": -1}, "cpus="),
        ({"nodes": 0}, "nodes="),
        ({"gpus": -2}, "gpus="),
        ({"memory": "12XB"}, "memory="),
        ({"time_limit": timedelta(minutes=-5)}, "time_limit="),
        ({"partition": "my partition"}, "partition="),
        ({"account": "acct\n"}, "account="),
    ],
)
def test_build_resources_names_the_bad_argument(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(JobSpecError, match=argument):
        build_resources(**kwargs)  # type: ignore[arg-type]
