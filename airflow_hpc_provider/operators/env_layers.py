"""The ``env_rules=`` and ``env_groups=`` arguments every job-running operator takes, and the one
call that layers them over the connection's rules (:mod:`airflow_hpc_provider.env_rules`).

Task rules are checked when the DAG is parsed (a templated rule once rendered); the connection's
rules and the group names when the task runs, where the connection is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from airflow_hpc_provider import env_rules as rules_model
from airflow_hpc_provider.dialects.directives import EnvRule
from airflow_hpc_provider.env_rules import JobEnvironment
from airflow_hpc_provider.operators.base import HpcOperator

# Templated like env=: values may come from Variables or Connections (Airflow masks their secrets).
ENV_RULE_FIELDS = ("task_env_rules", "env_groups")


def with_prelude(script: str, prelude: Sequence[str]) -> str:
    """``script`` with the env rules' lines before its first command (after a ``#!`` line)."""
    if not prelude:
        return script
    lines = "".join(f"{line}\n" for line in prelude)
    if script.startswith("#!"):
        first, newline, rest = script.partition("\n")
        return f"{first}{newline or chr(10)}{lines}{rest}"
    return lines + script


def _templated(raw: Any) -> bool:
    text = repr(raw)
    return "{{" in text or "{%" in text


class LayeredEnvOperator(HpcOperator):
    """An operator whose job environment is layered: connection -> groups -> task (see the module).

    :param env_rules: this task's rules, a list of mappings such as ``{"name": "PATH", "prepend":
        "/opt/bin"}`` (docs/env_rules.rst); templated, checked at parse time when literal.
    :param env_groups: names of the connection's rule groups to apply, in order.
    """

    def __init__(
        self,
        *,
        env_rules: Sequence[Mapping[str, Any]] | None = None,
        env_groups: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Anything but a list is kept as given, so the check below names it (a dict is no list).
        self.task_env_rules: Any = [] if env_rules is None else env_rules
        if isinstance(env_rules, list | tuple):
            self.task_env_rules = list(env_rules)
        self.env_groups = [env_groups] if isinstance(env_groups, str) else list(env_groups)
        if not _templated(self.task_env_rules):
            rules = rules_model.parse_rules(self.task_env_rules, f"task {self.task_id!r}")
            rules_model.check_refused(rules, self._refusals(), f"task {self.task_id!r}")
        if not _templated(self.env_groups):
            rules_model.check_group_names(self.env_groups, f"task {self.task_id!r}")

    def layered_job_environment(
        self,
        *,
        conn_id: str | None,
        extra: Mapping[str, Any] | None = None,
        facts: Mapping[str, str | None],
        env: Mapping[str, str],
    ) -> JobEnvironment:
        """The job's environment: the connection's rules, the groups the task names, the task's
        rules, then its ``env``; logged by name and layer, never by value. ``extra``: the
        connection's extra (read here when not given)."""
        where = f"task {self.task_id!r}"
        task_rules = rules_model.parse_rules(self.task_env_rules, where)
        groups = rules_model.check_group_names(self.env_groups, where)
        if extra is None:
            extra = self._connection_extra(conn_id)
        connection = rules_model.ConnectionRules.from_extra(conn_id or "(none)", extra)
        known = {"conn_id": conn_id or "", "dag_id": self.dag_id, "task_id": self.task_id, **facts}
        environment = rules_model.layered_environment(
            connection.layers(groups, task_rules),
            {name: "" if value is None else str(value) for name, value in known.items()},
            env,
            refused=self._refusals(),
        )
        for value in environment.secrets:
            # Should the job print it, the task log shows *** (Airflow's masker, as for its secrets).
            mask_secret(value)
        lines = environment.log_lines()
        if lines:
            self.log.info(
                "Job environment (names and the layers that set them; values are never logged):\n  %s",
                "\n  ".join(lines),
            )
        return environment

    def refused_rule_names(self) -> Sequence[EnvRule]:
        """Names no rule may set for this operator's jobs: what its scheduler sets inside the job
        (see subclasses). The submitting shell's own names are free: it sees carriers only."""
        return ()

    def _refusals(self) -> list[tuple[str, str]]:
        return [(rule.pattern, rule.reason) for rule in self.refused_rule_names()]

    def _connection_extra(self, conn_id: str | None) -> Mapping[str, Any]:
        # An AWS task may run on ambient credentials without a connection: then it has no rules.
        if not conn_id:
            return {}
        try:
            return BaseHook.get_connection(conn_id).extra_dejson
        except AirflowNotFoundException:
            self.log.info("No connection %r: no connection env rules apply", conn_id)
            return {}
