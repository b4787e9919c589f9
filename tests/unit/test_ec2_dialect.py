"""The EC2 runner's pure parts: tags, instance types, probe answers, console host keys, the reaper rule,
user-data limits, and the shipped CloudFormation policy against the calls the hook makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
import yaml

from airflow_hpc_provider.dialects import ec2, ec2_boot
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.hooks.ec2 import CONTROLLER_ACTIONS
from airflow_hpc_provider.jobs import JobKey, JobState

KEY = JobKey.for_task_instance("dag", "task", "run", -1, 2)
OWNER = ec2.TaskTags("dag", "task", "run", -1, 2, "aws_ec2", KEY)


def test_tags_name_the_task_instance_and_survive_a_round_trip() -> None:
    tags = OWNER.tags("p", {"team": "x", "p:key": "forged"})
    assert tags["p:dag"] == "dag" and tags["p:try"] == "2" and tags["p:backend"] == "aws_ec2"
    assert tags["team"] == "x" and tags["p:key"] == KEY.tag  # extra tags never override ours
    assert ec2.TaskTags.from_tags(tags, "p") == OWNER
    assert ec2.TaskTags.from_tags({"Name": "other"}, "p") is None


def test_long_ids_are_cut_to_the_tag_value_limit_while_the_key_still_identifies() -> None:
    tags = ec2.TaskTags("d" * 300, "t", "r", -1, 1, "b", KEY).tags("p")
    assert len(tags["p:dag"]) == 256 and tags["p:key"] == KEY.tag


def test_the_instance_type_comes_from_the_partition_with_a_default() -> None:
    types = ec2.check_instance_types({"default": "t3.small", "gpu": "g5.xlarge"})
    assert ec2.choose_instance_type(types, None) == "t3.small"
    assert ec2.choose_instance_type(types, "gpu") == "g5.xlarge"
    with pytest.raises(JobSpecError, match="known partitions: default, gpu"):
        ec2.choose_instance_type(types, "bigmem")
    with pytest.raises(JobSpecError, match="needs a 'default'"):
        ec2.check_instance_types({"gpu": "g5.xlarge"})


def test_the_probe_answer_maps_phases_and_exit_codes() -> None:
    dialect = ec2.Ec2RunnerDialect("/w")
    running = dialect.read_poll({"runner": (0, "phase running")}, ["i-1"]).observations["i-1"]
    assert running.status is not None and running.status.state is JobState.RUNNING and not running.final
    for text, state, code in (
        ("exit 0", JobState.COMPLETED, 0),
        ("exit 3", JobState.FAILED, 3),
        ("exit 124 limit", JobState.TIMEOUT, 124),
        ("exit 137 limit", JobState.TIMEOUT, 137),
        ("exit 137", JobState.FAILED, 137),  # killed, but not by the time limit
        ("exit 124", JobState.FAILED, 124),  # the command's own exit code, not timeout's
    ):
        seen = dialect.read_poll({"runner": (0, text)}, ["i-1"]).observations["i-1"]
        assert seen.final and seen.status is not None and seen.status.state is state and seen.status.exit_code == code
    gone = dialect.read_poll({"runner": (0, "gone running")}, ["i-1"]).observations["i-1"]
    assert gone.final and gone.status is not None and gone.status.state is JobState.FAILED
    assert gone.status.exit_code is None and "died while running" in (gone.status.reason or "")
    assert dialect.read_poll({}, ["i-1"]).failure is not None
    assert dialect.read_poll({"runner": (2, "sh: oops")}, ["i-1"]).failure is not None


def test_host_keys_come_from_our_marker_lines_before_cloud_init_block() -> None:
    ours = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO+T+h22ep7x1mOyc/5RqpHI"
    console = (
        "-----BEGIN SSH HOST KEY KEYS-----\necdsa-sha2-nistp256 AAAAE2VjZHNh root@host\n"
        "-----END SSH HOST KEY KEYS-----\n"
        f"AIRFLOW_HPC_HOST_KEY {ours}\nAIRFLOW_HPC_HOST_KEY {ours}\nAIRFLOW_HPC_HOST_KEY not a key\n"
    )
    assert ec2_boot.host_keys_from_console(console) == (ours,)
    block_only = console.split("AIRFLOW_HPC_HOST_KEY")[0]
    assert ec2_boot.host_keys_from_console(block_only) == ("ecdsa-sha2-nistp256 AAAAE2VjZHNh",)
    assert ec2_boot.host_keys_from_console("nothing here") == ()


def test_the_reaper_keeps_young_and_live_instances_and_names_why_it_takes_the_rest() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    old = ec2.ReapCandidate("i-1", "running", now - timedelta(hours=1), OWNER)
    young = ec2.ReapCandidate("i-2", "running", now - timedelta(minutes=1), OWNER)
    minimum = timedelta(minutes=15)
    assert ec2.reap_reason(young, None, now, minimum) is None
    assert ec2.reap_reason(old, "running", now, minimum) is None
    assert ec2.reap_reason(old, "up_for_retry", now, minimum) is None
    assert ec2.reap_reason(old, "success", now, minimum) == "its task instance is success"
    assert ec2.reap_reason(old, None, now, minimum) == "its task instance no longer exists"


def test_user_data_is_quoted_carries_no_payload_and_respects_the_size_limit() -> None:
    spec = ec2_boot.RunnerSpec(
        image="repo/img:1",
        run_dir="/var/lib/x y",
        os_user="ec2-user",
        time_limit_s=60,
        kill_after_s=5,
        startup_timeout_s=600,
        idle_slack_s=600,
    )
    text = ec2_boot.render_user_data(spec)
    assert "W='/var/lib/x y'" in text and "\nset -x" not in text and "set -o xtrace" not in text
    assert "timeout -k" in text and "--init" in text and "poweroff" in text
    ec2_boot.check_user_data_size(text)
    with pytest.raises(JobSpecError, match="at most 16384"):
        ec2_boot.check_user_data_size(text + "#" * ec2_boot.USER_DATA_LIMIT_BYTES)
    with pytest.raises(JobSpecError, match="not a container image"):
        ec2_boot.render_user_data(ec2_boot.RunnerSpec(**{**spec.__dict__, "image": "img; rm -rf /"}))


def test_the_shipped_controller_policies_grant_exactly_the_calls_the_hooks_make() -> None:
    text = resources.files("airflow_hpc_provider").joinpath("cloudformation/ec2_ephemeral.yaml").read_text()
    template = yaml.safe_load(text)
    granted: set[str] = set()
    # ControllerPolicy, and ArchivePolicy (only with ArchiveBucket) for archive_s3_prefix.
    for policy in ("ControllerPolicy", "ArchivePolicy"):
        for statement in template["Resources"][policy]["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Effect") != "Allow":
                continue
            actions = statement["Action"]
            granted.update([actions] if isinstance(actions, str) else actions)
    assert granted == set(CONTROLLER_ACTIONS)
    assert template["Resources"]["ArchivePolicy"]["Condition"] == "HasArchiveBucket"
    role = template["Resources"]["TaskInstanceRole"]["Properties"]
    assert any("AmazonSSMManagedInstanceCore" in str(arn) for arn in role["ManagedPolicyArns"])
