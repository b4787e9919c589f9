"""The shipped CloudFormation templates hold no construct that deploys in AWS but not in moto.

An ``Fn::If`` with an ``AWS::NoValue`` branch inside a list (a policy's Statement list, say) is
dropped by AWS but kept as a null by moto's CloudFormation, which then refuses the policy
(MalformedPolicyDocument): the integration tests could not deploy such a template, and the AWS
set-up command deploys these templates as they are. Optional parts are resources of their own with a
``Condition`` instead.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import yaml

TEMPLATES = sorted(
    entry.name
    for entry in resources.files("airflow_hpc_provider").joinpath("cloudformation").iterdir()
    if entry.name.endswith(".yaml")
)


def no_value_in_lists(node: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += no_value_in_lists(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            branches = item.get("Fn::If", [None])[1:] if isinstance(item, dict) else []
            if {"Ref": "AWS::NoValue"} in branches:
                found.append(f"{path}[{index}]")
            found += no_value_in_lists(item, f"{path}[{index}]")
    return found


def test_there_are_templates_to_check() -> None:
    assert {"batch_revision.yaml", "ec2_ephemeral.yaml"} <= set(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_list_in_a_shipped_template_holds_an_optional_no_value_element(name: str) -> None:
    text = resources.files("airflow_hpc_provider").joinpath("cloudformation", name).read_text()
    assert no_value_in_lists(yaml.safe_load(text), name) == []
