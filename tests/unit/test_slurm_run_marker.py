"""A requeued Slurm job marks each run after the first itself, as the first line it writes.

The marker lines of the rendered batch script run here under the local shells of the POSIX family
(dash is /bin/sh on Debian, bash), with stdout appended to an output file as Slurm opens it with
``--open-mode=append``; ``SLURM_RESTART_COUNT`` and the job's ids are set as Slurm sets them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.jobs import JobSpec

SHELLS = [shell for shell in ("dash", "bash", "zsh", "ksh") if shutil.which(shell)]


def run(shell: str, output: Path, env: dict[str, str], *, prelude: str = "") -> None:
    """The marker lines, then a first command of the run, with stdout appended to ``output``."""
    script = prelude + slurm.RUN_MARKER_LINES + "echo 'first line of the run'\n"
    with output.open("ab") as out:
        subprocess.run([shell, "-c", script], stdout=out, env={"PATH": os.environ["PATH"], **env}, check=True)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_first_run_writes_no_marker(shell: str, tmp_path: Path) -> None:
    output = tmp_path / "job.log"
    for env in ({"SLURM_JOB_ID": "7"}, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "0"}):
        output.write_bytes(b"")
        run(shell, output, env)
        assert output.read_text() == "first line of the run\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_a_requeued_run_begins_with_its_marker_right_after_the_runs_before(shell: str, tmp_path: Path) -> None:
    output = tmp_path / "job.log"
    output.write_bytes(b"run 1 line 1\n")
    run(shell, output, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}, prelude="set -eu\n")
    assert output.read_text() == "run 1 line 1\n--- run 3 of job 7 (requeued) ---\nfirst line of the run\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_a_run_cut_mid_line_keeps_its_unfinished_line_apart_from_the_marker(shell: str, tmp_path: Path) -> None:
    output = tmp_path / "job.log"
    output.write_bytes(b"run 1 line 1\nrun 1 unfinish")
    run(shell, output, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"})
    assert output.read_text().splitlines() == [
        "run 1 line 1",
        "run 1 unfinish",
        "--- run 2 of job 7 (requeued) ---",
        "first line of the run",
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_an_array_elements_marker_names_the_element_as_the_provider_watches_it(shell: str, tmp_path: Path) -> None:
    output = tmp_path / "job.log"
    env = {"SLURM_JOB_ID": "815", "SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": "1"}
    run(shell, output, env)
    assert output.read_text() == "--- run 2 of job 812_3 (requeued) ---\nfirst line of the run\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_when_the_last_byte_cannot_be_read_a_newline_goes_first_rather_than_a_glued_marker(
    shell: str, tmp_path: Path
) -> None:
    # stdout a pipe, not the output file: the check is impossible (and must not block on the pipe).
    script = slurm.RUN_MARKER_LINES + "echo 'first line of the run'\n"
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}
    done = subprocess.run([shell, "-c", script], capture_output=True, env=env, check=True, timeout=10)
    assert done.stdout == b"\n--- run 2 of job 7 (requeued) ---\nfirst line of the run\n"


@pytest.mark.parametrize(
    "shebang", ["#!/bin/sh", "#!/bin/bash -l", "#!/usr/bin/env bash", "#!/bin/zsh", "#!/usr/bin/env ksh"]
)
def test_a_users_shell_script_gets_the_marker_after_its_directive_header(shebang: str) -> None:
    spec = JobSpec(command="", job_name="x", setup=("module load gcc",))
    rendered = slurm.render_script(spec, script=f"{shebang}\n#SBATCH --ntasks=2\necho hi\n")
    assert rendered == f"{shebang}\n#SBATCH --ntasks=2\n{slurm.RUN_MARKER_LINES}module load gcc\necho hi\n"


@pytest.mark.parametrize("shebang", ["#!/usr/bin/env python3", "#!/bin/tcsh", "#!/usr/bin/perl"])
def test_a_script_for_another_interpreter_gets_no_shell_marker_lines(shebang: str) -> None:
    rendered = slurm.render_script(JobSpec(command="", job_name="x"), script=f"{shebang}\n#SBATCH -n 1\nprint(1)\n")
    assert rendered == f"{shebang}\n#SBATCH -n 1\nprint(1)\n"
