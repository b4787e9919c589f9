"""Layered environment rules: what a connection, its named groups and a task say about the job's
environment, merged into what travels to the job. Pure: no I/O, no Airflow.

A rule (one mapping, JSON in a connection's extra or Python in a DAG)::

    {"name": "PATH", "prepend": "/opt/tools/bin"}                 # also "append", "set"
    {"name": "LD_LIBRARY_PATH", "append": "/opt/x/lib", "separator": ":"}
    {"name": "DATA", "set": "${SCRATCH}/data", "when": {"partition": ["gpu*", "a100"]}}
    {"init": ["module load cuda/12.2"], "when": {"scheduler": "slurm"}}

Layers are applied in order, connection -> groups (in the order the task names them) -> task, and
within a layer rule by rule: a later ``set`` wins, ``append``/``prepend`` add to what is there.
``${NAME}`` in a value is replaced by the value earlier rules gave NAME (``$${`` writes a literal
``${``); any other ``$`` is text. A rule with ``when`` counts only when every attribute it names
matches one of its shell-style patterns (:data:`FACTS` lists the attributes).

How values reach the job, without ever being written into its script: every variable a rule makes
travels in the job's environment under a carrier name (``AIRFLOW_HPC_ENV_SET_NAME``, ...), the way
the task's ``env`` travels (the scheduler's environment, or the AWS API). The job script holds only
value-free lines (:attr:`JobEnvironment.prelude`): the rules' init lines first, then one line per
variable that moves the carrier's value into NAME and unsets the carrier. For ``append`` and
``prepend`` that line joins the pieces with the value NAME already has on the compute node at that
moment (after the init lines: ``module load`` may have changed PATH), so the node's own PATH is
extended there, not the Airflow worker's. When NAME is empty or unset on the node, the pieces are
joined alone: no dangling separator (an empty PATH entry would mean the working directory).
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.errors import JobSpecError

# The attributes a rule's ``when`` may test, each the task's value ("" when it has none).
FACTS = ("scheduler", "conn_id", "partition", "queue", "account", "image", "dag_id", "task_id")
_KEYS = frozenset({"name", "set", "append", "prepend", "separator", "init", "when", "secret"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ``$${`` (an escaped ``${``) or ``${NAME}``; a ``${`` that is neither is an error.
_EXPANSION = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
CARRIER_PREFIX = "AIRFLOW_HPC_ENV_"
# The provider's own variables: no rule may set them (carriers, the job's key, the manifest, ...).
PROVIDER_PREFIX = "AIRFLOW_HPC_"


class Action(enum.Enum):
    """What a rule does to its variable."""

    SET = "set"
    """Replace the value (earlier rules' and the node's)."""
    APPEND = "append"
    """Add after the value, joined with the rule's separator."""
    PREPEND = "prepend"
    """Add before the value, joined with the rule's separator."""


@dataclass(frozen=True)
class Rule:
    """One checked rule. ``name``/``action``/``value`` are None for an init-only rule."""

    name: str | None
    action: Action | None
    value: str
    separator: str = ":"
    init: tuple[str, ...] = ()
    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    secret: bool = False

    def applies(self, facts: Mapping[str, str]) -> bool:
        return all(
            any(fnmatch.fnmatchcase(facts.get(attribute, ""), pattern) for pattern in patterns)
            for attribute, patterns in self.when
        )


@dataclass(frozen=True)
class Layer:
    """Rules from one place: ``connection slurm_main``, ``group cuda``, ``task``."""

    label: str
    rules: tuple[Rule, ...]


def _fail(where: str, message: str) -> JobSpecError:
    return JobSpecError(f"env rules of {where}: {message}")


def check_value(value: str, where: str) -> str:
    """A value's ``${...}`` are well formed (``${NAME}`` or the escape ``$${``)."""
    for match in _EXPANSION.finditer(value):
        if match.group(0) == "${" or (match.group(1) is not None and not _NAME.fullmatch(match.group(1))):
            shown = match.group(0) if match.group(0) != "${" else value[match.start() : match.start() + 20]
            raise _fail(
                where,
                f"{shown!r} in {value!r} is not an expansion: write ${{NAME}} for an earlier rule's "
                "variable, or $${ for a literal '${'",
            )
    return value


def _patterns(raw: Any, attribute: str, where: str) -> tuple[str, ...]:
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list | tuple) or not values or not all(isinstance(v, str) for v in values):
        raise _fail(where, f"when[{attribute!r}] must be a pattern or a non-empty list of patterns, not {raw!r}")
    return tuple(values)


def parse_rule(raw: Any, where: str) -> Rule:
    """One rule from its mapping, or a :class:`JobSpecError` that says what is wrong and where."""
    if not isinstance(raw, Mapping):
        raise _fail(where, f"a rule is a mapping such as {{'name': 'PATH', 'prepend': '/opt/bin'}}, not {raw!r}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown} in {dict(raw)!r}; a rule takes {sorted(_KEYS)}")
    actions = [action for action in Action if action.value in raw]
    name = raw.get("name")
    init_raw = raw.get("init", ())
    init_lines = [init_raw] if isinstance(init_raw, str) else init_raw
    if not isinstance(init_lines, list | tuple) or not all(isinstance(line, str) for line in init_lines):
        raise _fail(where, f"init must be a line or a list of lines, not {init_raw!r}")
    for line in init_lines:
        if "\n" in line or "\r" in line or "\0" in line or not line.strip():
            raise _fail(where, f"init line {line!r} must be one non-empty line (give several lines as a list)")
    if len(actions) > 1:
        raise _fail(where, f"{dict(raw)!r} has {[a.value for a in actions]}: a rule does one of set, append, prepend")
    if name is None and actions:
        raise _fail(where, f"{dict(raw)!r} has no 'name': which variable does it {actions[0].value}?")
    if name is not None and not actions:
        raise _fail(where, f"{dict(raw)!r} names {name!r} but neither sets, appends nor prepends to it")
    if name is None and not init_lines:
        raise _fail(where, f"{dict(raw)!r} does nothing: give a name with set/append/prepend, or init lines")
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        raise _fail(where, f"{name!r} is not a valid environment variable name")
    if name is not None and name.startswith(PROVIDER_PREFIX):
        raise _fail(where, f"{name!r} is refused: {PROVIDER_PREFIX}* are the provider's own variables")
    action = actions[0] if actions else None
    value = raw.get(action.value) if action else ""
    if not isinstance(value, str):
        raise _fail(where, f"the value of {name!r} must be a string, not {value!r}")
    separator = raw.get("separator", ":")
    if "separator" in raw and action not in (Action.APPEND, Action.PREPEND):
        raise _fail(where, f"{dict(raw)!r}: separator only goes with append or prepend")
    if not isinstance(separator, str):
        raise _fail(where, f"separator must be a string, not {separator!r}")
    when_raw = raw.get("when", {})
    if not isinstance(when_raw, Mapping):
        raise _fail(where, f"when must be a mapping such as {{'partition': 'gpu*'}}, not {when_raw!r}")
    for attribute in when_raw:
        if attribute not in FACTS:
            raise _fail(where, f"when tests {attribute!r}, which is none of {list(FACTS)}")
    when = tuple((str(attribute), _patterns(patterns, attribute, where)) for attribute, patterns in when_raw.items())
    secret = raw.get("secret", False)
    if not isinstance(secret, bool):
        raise _fail(where, f"secret must be true or false, not {secret!r}")
    if secret and action is None:
        raise _fail(where, f"{dict(raw)!r}: secret marks a value; an init-only rule has none")
    return Rule(
        name=name,
        action=action,
        value=check_value(value, where),
        separator=separator,
        init=tuple(init_lines),
        when=when,
        secret=secret,
    )


def parse_rules(raw: Any, where: str) -> tuple[Rule, ...]:
    """A list of rules (None: none)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise _fail(where, f"give a list of rules, not {type(raw).__name__} {raw!r}")
    return tuple(parse_rule(rule, f"{where} (rule {index + 1})") for index, rule in enumerate(raw))


def parse_groups(raw: Any, where: str) -> dict[str, tuple[Rule, ...]]:
    """Named groups: ``{"cuda": [rules...], ...}``."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail(where, f"env_groups is a mapping of group name to a list of rules, not {raw!r}")
    groups: dict[str, tuple[Rule, ...]] = {}
    for name, rules in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise _fail(where, f"group name {name!r} must be a non-empty string")
        groups[name] = parse_rules(rules, f"{where}, group {name!r}")
    return groups


def check_group_names(raw: Any, where: str) -> tuple[str, ...]:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n.strip() for n in names):
        raise _fail(where, f"env_groups names groups of the connection: a list of names, not {raw!r}")
    if len(set(names)) != len(names):
        raise _fail(where, f"env_groups {list(names)!r} names a group twice")
    return tuple(names)


@dataclass(frozen=True)
class ConnectionRules:
    """What a connection's extra says: ``env_rules`` (every task) and ``env_groups`` (by name)."""

    conn_id: str
    rules: tuple[Rule, ...] = ()
    groups: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def from_extra(cls, conn_id: str, extra: Mapping[str, Any]) -> ConnectionRules:
        where = f"connection {conn_id!r}"
        return cls(
            conn_id=conn_id,
            rules=parse_rules(_json(extra.get("env_rules"), where), where),
            groups=parse_groups(_json(extra.get("env_groups"), where), where),
        )

    def layers(self, group_names: Sequence[str], task_rules: tuple[Rule, ...]) -> list[Layer]:
        missing = [name for name in group_names if name not in self.groups]
        if missing:
            known = ", ".join(sorted(self.groups)) or "none"
            raise JobSpecError(
                f"env_groups {missing} are not groups of connection {self.conn_id!r} (its groups: {known})"
            )
        return [
            Layer(f"connection {self.conn_id}", self.rules),
            *(Layer(f"group {name}", self.groups[name]) for name in group_names),
            Layer("task", task_rules),
        ]


def _json(raw: Any, where: str) -> Any:
    """The admin UI's text fields save JSON text; a JSON connection URI or a secrets backend, objects."""
    if isinstance(raw, str):
        import json

        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise _fail(where, f"not JSON: {error}") from None
    return raw


# --- layering -----------------------------------------------------------------------------------


@dataclass
class _Around:
    """A value joined on the node: ``pre`` pieces, the node's value, ``post`` pieces (text, separator)."""

    pre: list[tuple[str, str]] = field(default_factory=list)
    post: list[tuple[str, str]] = field(default_factory=list)

    def before(self) -> str:
        return "".join(text + separator for text, separator in self.pre)

    def after(self) -> str:
        return "".join(separator + text for text, separator in self.post)

    def alone(self) -> str:
        """The pieces joined without the node's value (it is empty or unset there)."""
        before, after = self.before(), self.after()
        if self.post:
            after = after[len(self.post[0][1]) :]
        elif self.pre:
            before = before[: len(before) - len(self.pre[-1][1])]
        return before + after


@dataclass(frozen=True)
class Origin:
    """Which layers touched one variable, and how (for the task log: never the value)."""

    name: str
    steps: tuple[tuple[str, Action], ...]
    joined_on_node: bool

    def describe(self) -> str:
        steps = ", ".join(f"{action.value} by {label}" for label, action in self.steps)
        return f"{self.name} ({steps}{'; joined with the node value' if self.joined_on_node else ''})"


@dataclass(frozen=True)
class JobEnvironment:
    """What travels to the job (``variables``: the task's env plus the carriers), the value-free
    script lines that apply it (``prelude``), and where each variable came from."""

    variables: dict[str, str]
    prelude: tuple[str, ...]
    origins: tuple[Origin, ...]
    skipped: tuple[str, ...] = ()
    from_env: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    """Values of rules marked ``secret`` (as expanded), for the caller to mask in the task log."""

    def log_lines(self) -> list[str]:
        lines = [origin.describe() for origin in self.origins]
        lines += [f"{name} (set by the task's env)" for name in self.from_env]
        lines += [f"skipped: {label}" for label in self.skipped]
        return lines


# Value-free shell (sh, bash, dash, ksh, zsh): ``eval`` sees only the variable's name (checked
# against _NAME) and parameter expansions; an expansion's result is never parsed again.
_SET_FUNCTION = (
    '_airflow_hpc_set() { eval "export $1=\\"\\${AIRFLOW_HPC_ENV_SET_$1-}\\""; unset "AIRFLOW_HPC_ENV_SET_$1"; }'
)
_JOIN_FUNCTION = (
    '_airflow_hpc_join() { if eval "[ -n \\"\\${$1-}\\" ]"; then '
    'eval "export $1=\\"\\${AIRFLOW_HPC_ENV_PRE_$1-}\\${$1}\\${AIRFLOW_HPC_ENV_POST_$1-}\\""; '
    'else eval "export $1=\\"\\${AIRFLOW_HPC_ENV_ALONE_$1-}\\""; fi; '
    'unset "AIRFLOW_HPC_ENV_PRE_$1" "AIRFLOW_HPC_ENV_POST_$1" "AIRFLOW_HPC_ENV_ALONE_$1"; }'
)


def _expand(value: str, known: Mapping[str, str | _Around], where: str, name: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        other = match.group(1)
        found = known.get(other)
        if isinstance(found, str):
            return found
        if isinstance(found, _Around):
            raise JobSpecError(
                f"env rules of {where}: {name!r} uses ${{{other}}}, whose value is only known on the "
                f"compute node (it appends or prepends to the node's {other}); set {other} first to use it here"
            )
        raise JobSpecError(
            f"env rules of {where}: {name!r} uses ${{{other}}}, which no earlier rule sets "
            f"(set so far: {', '.join(sorted(known)) or 'nothing'}); "
            "${NAME} expands only variables of earlier rules, write $${ for a literal '${'"
        )

    return _EXPANSION.sub(replace, value)


def check_refused(rules: Iterable[Rule], refused: Sequence[tuple[str, str]], where: str) -> None:
    """Refuse a rule for a name in ``refused``: (pattern, reason) pairs, ``NAME`` or ``PREFIX*``."""
    for rule in rules:
        for pattern, reason in refused:
            if rule.name is None:
                continue
            if rule.name.startswith(pattern[:-1]) if pattern.endswith("*") else rule.name == pattern:
                raise _fail(where, f"{rule.name!r} is refused: {reason}")


def layered_environment(
    layers: Iterable[Layer],
    facts: Mapping[str, str],
    env: Mapping[str, str],
    refused: Sequence[tuple[str, str]] = (),
) -> JobEnvironment:
    """Apply ``layers`` in order for a task with ``facts``, then the task's own ``env`` (the last
    layer: it wins over every rule for its names). ``refused``: (pattern, reason) pairs of names no
    rule may set here (``NAME`` or ``PREFIX*``): the scheduler sets them in the job."""
    state: dict[str, str | _Around] = {}
    steps: dict[str, list[tuple[str, Action]]] = {}
    init: list[str] = []
    skipped: list[str] = []
    secrets: list[str] = []
    for layer in layers:
        for index, rule in enumerate(layer.rules):
            if not rule.applies(facts):
                shown = ", ".join(f"{attribute} {'|'.join(patterns)}" for attribute, patterns in rule.when)
                skipped.append(f"{layer.label} rule {index + 1} ({rule.name or 'init'}; when {shown})")
                continue
            init.extend(rule.init)
            if rule.name is None or rule.action is None:
                continue
            check_refused((rule,), refused, layer.label)
            value = _expand(rule.value, state, layer.label, rule.name)
            if rule.secret and value:
                secrets.append(value)
            current = state.get(rule.name)
            if rule.action is Action.SET:
                state[rule.name] = value
            elif isinstance(current, str):
                if not current:
                    state[rule.name] = value
                elif rule.action is Action.APPEND:
                    state[rule.name] = current + rule.separator + value
                else:
                    state[rule.name] = value + rule.separator + current
            else:
                around = current if isinstance(current, _Around) else _Around()
                if rule.action is Action.APPEND:
                    around.post.append((value, rule.separator))
                else:
                    around.pre.insert(0, (value, rule.separator))
                state[rule.name] = around
            steps.setdefault(rule.name, []).append((layer.label, rule.action))
    variables = {str(name): str(value) for name, value in env.items()}
    variables_from_env = list(variables)
    lines: list[str] = list(init)
    applied: list[str] = []
    origins: list[Origin] = []
    for name, final in state.items():
        if name in variables:  # the task's env= is the last layer
            continue
        if isinstance(final, str):
            variables[f"{CARRIER_PREFIX}SET_{name}"] = final
            applied.append(f"_airflow_hpc_set {name}")
        else:
            variables[f"{CARRIER_PREFIX}PRE_{name}"] = final.before()
            variables[f"{CARRIER_PREFIX}POST_{name}"] = final.after()
            variables[f"{CARRIER_PREFIX}ALONE_{name}"] = final.alone()
            applied.append(f"_airflow_hpc_join {name}")
        origins.append(Origin(name, tuple(steps[name]), joined_on_node=not isinstance(final, str)))
    if applied:
        uses = {line.split(" ", 1)[0] for line in applied}
        functions = [text for text in (_SET_FUNCTION, _JOIN_FUNCTION) if text.split("(", 1)[0] in uses]
        lines += [*functions, *applied, f"unset -f {' '.join(sorted(uses))}"]
    return JobEnvironment(
        variables=variables,
        prelude=tuple(lines),
        origins=tuple(origins),
        skipped=tuple(skipped),
        from_env=tuple(variables_from_env),
        secrets=tuple(secrets),
    )
