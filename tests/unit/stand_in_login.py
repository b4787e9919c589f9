"""A login node of stand-ins for the submit scripts' tests: ``squeue``, ``sacct`` and ``sbatch`` (Slurm),
``qstat``, ``qacct`` and ``qsub`` (Grid Engine), that record their calls and answer what a test tells
them, under a home directory of its own.

Each stand-in appends its arguments to ``$RECORD/<name>.args`` and answers from ``$ANSWERS/<name>``
(stdout) and ``$ANSWERS/<name>.rc`` (exit status); sbatch and qsub keep the script they read (and
the environment qsub would pass), sbatch prints 5000 unless told otherwise.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

STAND_IN = """#!/bin/sh
name=$(basename "$0")
printf '%s\\n' "$*" >> "$RECORD/$name.args"
case $name in sbatch|qsub) cat > "$RECORD/script"; env > "$RECORD/env" ;; esac
[ -f "$ANSWERS/$name" ] && cat -- "$ANSWERS/$name"
[ -f "$ANSWERS/$name.rc" ] && exit "$(cat -- "$ANSWERS/$name.rc")"
[ "$name" = sbatch ] && echo 5000
exit 0
"""


class StandInLogin:
    def __init__(self, tmp_path: Path, log_dir: str) -> None:
        self.bin, self.record, self.answers, self.home = (tmp_path / d for d in ("bin", "record", "answers", "home"))
        self.log_dir = self.home / log_dir
        for directory in (self.bin, self.record, self.answers, self.log_dir):
            directory.mkdir(parents=True)
        for name in ("squeue", "sacct", "sbatch", "qstat", "qacct", "qsub"):
            (self.bin / name).write_text(STAND_IN)
            (self.bin / name).chmod(stat.S_IRWXU)

    def answer(self, program: str, text: str, rc: int = 0) -> None:
        (self.answers / program).write_text(text)
        (self.answers / f"{program}.rc").write_text(str(rc))

    def calls(self, program: str) -> list[str]:
        path = self.record / f"{program}.args"
        return path.read_text().splitlines() if path.exists() else []

    def claim(self, task_digest: str, job_id: str) -> None:
        """A trigger watched this job (the marker the poller leaves beside its cursor)."""
        (self.log_dir / f"{task_digest}-{job_id}.cursor.watched").write_text("")

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run a submit script with ``/bin/sh -s`` as the login node would, the stand-ins first on PATH."""
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.home), "RECORD": str(self.record)}
        env["ANSWERS"] = str(self.answers)
        return subprocess.run(
            ["/bin/sh", "-s"], input=script, capture_output=True, text=True, env=env, cwd=self.home, timeout=30
        )
