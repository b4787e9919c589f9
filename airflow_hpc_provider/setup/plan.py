"""The three commands over a list of resources: ``provision``, ``show`` and ``cleanup``.

Each first looks at every resource (by name) before it changes anything, so that a resource under
one of its names that it did not make stops ``provision`` before the first creation, and anything
that would make ``cleanup`` touch what is not its own stops it before the first deletion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.naming import TAG_KEY
from airflow_hpc_provider.setup.prompts import Prompter
from airflow_hpc_provider.setup.resources import Found, Resource


@dataclass(frozen=True)
class Outcome:
    """What happened to (or was seen of) one resource."""

    kind: str
    name: str
    state: str  # created | unchanged | updated | exists | missing | not ours | deleted | left alone
    detail: str = ""
    notes: tuple[str, ...] = ()

    def line(self) -> str:
        words = {
            "unchanged": "exists, unchanged",
            "updated": "exists, updated",
            "not ours": f"exists, NOT made by this set-up (no {TAG_KEY} tag of its name)",
            "left alone": "left alone: not made by this set-up",
        }.get(self.state, self.state)
        text = f"{self.kind} {self.name}: {words}"
        if self.notes:
            text += f": {'; '.join(self.notes)}"
        if self.detail:
            text += f" [{self.detail}]"
        return text


Report = Callable[[Outcome], None]


def survey(resources: Sequence[Resource]) -> list[tuple[Resource, Found | None]]:
    """Every resource as it is now, in order (later finds may use what earlier ones learnt)."""
    return [(resource, resource.find()) for resource in resources]


def _not_ours(found: Found | None, setup_name: str) -> bool:
    return found is not None and not found.ours(setup_name)


def provision(
    resources: Sequence[Resource], setup_name: str, prompter: Prompter, report: Report, where: str
) -> list[Outcome]:
    seen = survey(resources)
    foreign = [(r, f) for r, f in seen if _not_ours(f, setup_name)]
    if foreign:
        listed = "; ".join(f"{r.kind} {r.name} ({f.detail})" for r, f in foreign if f)
        raise SetupError(
            f"these exist under the names of set-up {setup_name!r} but were not made by it (no {TAG_KEY}={setup_name} "
            f"tag), so it will neither use nor change them: {listed}. Choose another --name, or remove them yourself"
        )
    missing = [r for r, f in seen if f is None]
    if missing and not prompter.confirm(
        f"Create {len(missing)} resource(s) in {where}: " + ", ".join(f"{r.kind} {r.name}" for r in missing) + "?"
    ):
        raise SetupError("nothing was created (not confirmed)")
    outcomes: list[Outcome] = []
    for resource, found in seen:
        if found is None:
            outcome = Outcome(resource.kind, resource.name, "created", resource.create())
        else:
            changes = resource.converge(found)
            state = "updated" if changes else "unchanged"
            outcome = Outcome(resource.kind, resource.name, state, found.detail, tuple(changes))
        report(outcome)
        outcomes.append(outcome)
    return outcomes


def show(
    resources: Sequence[Resource], needed: Callable[[], Sequence[Resource]], setup_name: str, report: Report
) -> list[Outcome]:
    """Every resource that exists, and those of ``needed()`` (called after the survey) that do not."""
    seen = survey(resources)
    wanted = {id(r) for r in needed()}
    outcomes: list[Outcome] = []
    for resource, found in seen:
        if found is None:
            if id(resource) not in wanted:
                continue
            outcome = Outcome(resource.kind, resource.name, "missing")
        else:
            outcome = Outcome(
                resource.kind, resource.name, "exists" if found.ours(setup_name) else "not ours", found.detail
            )
        report(outcome)
        outcomes.append(outcome)
    return outcomes


def cleanup(
    resources: Sequence[Resource], setup_name: str, prompter: Prompter, report: Report, where: str
) -> list[Outcome]:
    seen = survey(resources)
    ours = [(r, f) for r, f in seen if f is not None and f.ours(setup_name)]
    blockers = [reason for resource, found in ours for reason in resource.deletion_blockers(found)]
    if blockers:
        raise SetupError("nothing was deleted: " + " | ".join(blockers))
    if ours and not prompter.confirm(
        f"Delete {len(ours)} resource(s) of set-up {setup_name!r} in {where}: "
        + ", ".join(f"{r.kind} {r.name}" for r, _ in ours)
        + "?"
    ):
        raise SetupError("nothing was deleted (not confirmed)")
    outcomes: list[Outcome] = []
    for resource, found in reversed(seen):
        if found is None:
            continue
        if found.ours(setup_name):
            outcome = Outcome(resource.kind, resource.name, "deleted", found.detail, tuple(resource.delete(found)))
        else:
            outcome = Outcome(resource.kind, resource.name, "left alone", found.detail)
        report(outcome)
        outcomes.append(outcome)
    return outcomes
