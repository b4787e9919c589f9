"""What the set-up prints: each resource as it goes, then the Airflow connection and operator arguments to use.

No credential is ever printed: the connection is built from scratch from the region, the names made
and the source connection's ``endpoint_url`` (never its login, password, token or role), and says
where keys would go. ``--json`` prints one document instead, for scripts.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from airflow_hpc_provider.setup.plan import Outcome

CREDENTIALS_NOTE = (
    "The connection carries no credentials, and this command prints none. Without them Airflow uses "
    "each host's default AWS credentials (an instance or task role, AWS_* variables, ~/.aws). To use an "
    "access key instead, put its id in Login and its secret in Password (in the UI, or through a secrets "
    "backend); never in the extra."
)


@dataclass
class Summary:
    setup: str
    part: str  # "batch" or "ec2"
    account: str
    region: str
    conn_id: str
    connection_extra: dict[str, Any]
    operator: str
    operator_arguments: dict[str, Any]
    attach_policies: list[str]
    notes: list[str] = field(default_factory=list)


def environment_variable(conn_id: str, extra: dict[str, Any]) -> str:
    value = json.dumps({"conn_type": "aws", "extra": extra})
    return f"AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(value)}"


def python_call(operator: str, arguments: dict[str, Any]) -> str:
    lines = [f"{operator}(", '    task_id="...",', '    command="...",']
    lines += [f"    {key}={json.dumps(value)}," for key, value in arguments.items()]
    return "\n".join([*lines, ")"])


def summary_text(summary: Summary) -> str:
    extra = json.dumps(summary.connection_extra, indent=2)
    indented_extra = extra.replace("\n", "\n                     ")
    parts = [
        "",
        f'Airflow connection "{summary.conn_id}":',
        "  In the UI (Admin > Connections > Add):",
        f"    Connection Id:   {summary.conn_id}",
        "    Connection Type: Amazon Web Services",
        f"    Extra:           {indented_extra}",
        "  Or as an environment variable of every Airflow component:",
        f"    export {environment_variable(summary.conn_id, summary.connection_extra)}",
        f"  {CREDENTIALS_NOTE}",
        "",
    ]
    if summary.attach_policies:
        parts.append("Attach to the IAM role or user of that connection (what the tasks need, nothing more):")
        parts += [f"    {arn}" for arn in summary.attach_policies]
        parts.append(f"  e.g. aws iam attach-role-policy --role-name <role> --policy-arn {summary.attach_policies[0]}")
        parts.append("")
    parts.append("Operator arguments:")
    parts += ["    " + line for line in python_call(summary.operator, summary.operator_arguments).splitlines()]
    if summary.notes:
        parts.append("")
        parts += [f"Note: {note}" for note in summary.notes]
    return "\n".join(parts)


@dataclass
class Output:
    """Streams outcome lines (text) or gathers everything into one JSON document (``--json``)."""

    as_json: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)
    outcomes: list[Outcome] = field(default_factory=list)

    def report(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if not self.as_json:
            self.out.write(outcome.line() + "\n")
            self.out.flush()

    def say(self, text: str) -> None:
        if not self.as_json:
            self.out.write(text + "\n")

    def finish(self, summary: Summary | None) -> None:
        if self.as_json:
            document: dict[str, Any] = {"resources": [asdict(o) for o in self.outcomes]}
            if summary is not None:
                document |= asdict(summary)
                document["connection"] = {
                    "conn_id": summary.conn_id,
                    "conn_type": "aws",
                    "extra": summary.connection_extra,
                }
            self.out.write(json.dumps(document, indent=2) + "\n")
        elif summary is not None:
            self.out.write(summary_text(summary) + "\n")
        self.out.flush()
