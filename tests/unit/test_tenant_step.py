"""A tenant started with ``cpus=`` runs as a job step with its share of the allocation's memory, and
says so in its log when it must wait for room.

The wrapper runs here for real under bash, with the allocation's environment as Slurm sets it and a
stand-in ``srun`` that records its arguments, talks as srun does when the step must wait, and runs
the command the way ``--output``/``--open-mode=append`` would. The real srun is exercised in
tests/integration/test_slurm_tenant_room.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import slurm_tenant
from airflow_hpc_provider.dialects.slurm_tenant import TenantSpec

FAKE_SRUN = r"""#!/bin/bash
printf '%s\n' "$@" > "$SRUN_ARGS"
out=
while [ $# -gt 0 ]; do
  case $1 in --output=*) out=${1#--output=};; --*) ;; *) break;; esac
  shift
done
out=${out//%%/%}
echo "srun: Job $SLURM_JOB_ID step creation temporarily disabled, retrying (Requested nodes are busy)" >&2
echo "srun: Step created for job $SLURM_JOB_ID" >&2
"$@" >> "$out" 2>&1
"""


def run_tenant(tmp_path: Path, spec: TenantSpec, **allocation: str) -> tuple[list[str], str, str]:
    """(srun's arguments, the tenant's log, its exit file) after running its wrapper."""
    bindir, directory = tmp_path / "bin", tmp_path / "tenant %j dir"
    bindir.mkdir()
    directory.mkdir()
    (bindir / "srun").write_text(FAKE_SRUN)
    (bindir / "srun").chmod(0o755)
    (directory / "command.sh").write_text(slurm_tenant.render_command(spec))
    (directory / "run.sh").write_text(slurm_tenant.render_wrapper(spec))
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SRUN_ARGS": str(tmp_path / "args"),
        "SLURM_JOB_ID": "77",
        **allocation,
    }
    subprocess.run(["bash", str(directory / "run.sh")], env=env, check=True, timeout=30)
    args = (tmp_path / "args").read_text().splitlines()
    return args, (directory / "log").read_text(), (directory / "exit").read_text()


@pytest.mark.parametrize(
    ("cpus", "allocation", "memory"),
    [
        (1, {"SLURM_MEM_PER_NODE": "400", "SLURM_CPUS_ON_NODE": "4"}, "--mem=100M"),
        (2, {"SLURM_MEM_PER_NODE": "400", "SLURM_CPUS_ON_NODE": "4"}, "--mem=200M"),
        (1, {"SLURM_MEM_PER_CPU": "50", "SLURM_CPUS_ON_NODE": "4"}, "--mem=50M"),
        (1, {"SLURM_MEM_PER_NODE": "3", "SLURM_CPUS_ON_NODE": "8"}, "--mem=1M"),
    ],
)
def test_a_tenant_step_gets_the_allocations_memory_per_cpu_times_its_cpus(
    tmp_path: Path, cpus: int, allocation: dict[str, str], memory: str
) -> None:
    args, _, _ = run_tenant(tmp_path, TenantSpec(command="true", cpus=cpus), **allocation)
    assert f"--cpus-per-task={cpus}" in args and memory in args and "--exact" in args


def test_the_tasks_own_memory_wins_over_the_share(tmp_path: Path) -> None:
    args, _, _ = run_tenant(
        tmp_path, TenantSpec(command="true", cpus=1, memory_mb=300), SLURM_MEM_PER_NODE="400", SLURM_CPUS_ON_NODE="4"
    )
    assert "--mem=300M" in args


def test_without_memory_accounting_the_step_asks_for_none(tmp_path: Path) -> None:
    args, _, _ = run_tenant(tmp_path, TenantSpec(command="true", cpus=1), SLURM_CPUS_ON_NODE="4")
    assert not [arg for arg in args if arg.startswith("--mem")]


def test_a_tenant_that_waits_for_room_says_so_then_runs_and_records_its_exit(tmp_path: Path) -> None:
    spec = TenantSpec(command='echo "it ran"; echo "to stderr" >&2; exit 4', cpus=1)
    args, log, exit_file = run_tenant(tmp_path, spec, SLURM_MEM_PER_NODE="400", SLURM_CPUS_ON_NODE="4")
    # srun's words reach the log through the filter's pipe while the command's output is appended
    # by srun itself, so the two streams may interleave; each keeps its own order.
    lines = log.splitlines()
    said = [line for line in lines if line.startswith(("airflow-hpc:", "srun:"))]
    assert said == [
        "airflow-hpc: waiting for room in allocation 77: this tenant asks for 1 CPU(s) and 100 MiB, "
        "which other tenants hold now",
        "srun: Job 77 step creation temporarily disabled, retrying (Requested nodes are busy)",
        "airflow-hpc: room found; the tenant starts",
        "srun: Step created for job 77",
    ]
    assert [line for line in lines if line not in said] == ["it ran", "to stderr"]
    assert exit_file == "4 exited\n"
    # The command's output is written by Slurm itself (appended, byte for byte); a '%' in the path
    # is escaped from srun's file-name patterns.
    assert f"--output={tmp_path}/tenant %%j dir/log" in args and "--open-mode=append" in args
