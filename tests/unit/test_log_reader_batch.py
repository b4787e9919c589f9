"""The one-process log reader (Perl) against the per-job shell reader it stands in for, run by /bin/sh.

Both must print the same bytes and leave the same cursor records for every case the protocol knows
(resume from records, new generation, whole lines, limits, compaction, missing files, odd paths and
bytes), and a poll's reads must start a constant number of processes however many jobs it reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.remote_shell import LogRead, Record, parse_framed

TOKEN = "AIRFLOW_HPC_00112233aabbccdd"
# The tools the per-job reader and the surrounding script use on a login node.
TOOLS = ("awk", "wc", "tr", "tail", "head", "sed", "mv", "cat", "printf")
BIG_LINE = "é" * 50_000 + "\n"  # a 100,000-byte line of two-byte characters


def run(script: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": str(cwd), "PATH": path or os.environ["PATH"], "LC_ALL": "en_US.UTF-8"}
    return subprocess.run(["/bin/sh", "-s"], input=script.encode(), capture_output=True, cwd=cwd, env=env, timeout=60)


def per_job_script(reads: list[LogRead]) -> str:
    """What every poll sent before the batch reader: one ``_log`` call per read."""
    return f"_t={TOKEN}\n{remote_shell.LOG_READER}" + "".join(read.call() for read in reads)


def batch_script(reads: list[LogRead]) -> str:
    return remote_shell.poll_script(TOKEN, "", reads)


Case = tuple[Callable[[Path], None], list[LogRead]]


def write(name: str, data: bytes) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    return make


def both(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for maker in makers:
            maker(root)

    return make


CASES: dict[str, Case] = {
    "binary bytes read from zero": (
        write("a.log", bytes(range(256)) + b"\n"),
        [LogRead("1", "a.log", "a.cursor", 0, 1 << 20, whole_lines=False)],
    ),
    "a half-written line held back": (write("a.log", b"one\ntwo\nthr"), [LogRead("1", "a.log", "a.cursor", 0, 100)]),
    "a chunk without any newline sent whole": (write("a.log", b"no newline yet"), [LogRead("1", "a.log", "c", 0, 100)]),
    "CRLF lines": (write("a.log", b"one\r\ntwo\r\nthr\r"), [LogRead("1", "a.log", "a.cursor", 0, 100)]),
    "a limit that cuts a multibyte line": (
        write("a.log", BIG_LINE.encode() * 3),
        [LogRead("1", "a.log", "a.cursor", 0, 65_537), LogRead("2", "a.log", "b.cursor", 3, 65_537, whole_lines=False)],
    ),
    "resume from records of several generations": (
        both(
            write("a.log", b"a\nb\nc\nd\ne\n"),
            write("a.cursor", b"0 4 0 1\n4 8 0 1\n2 6 0 3\ngarbage line\n1 9 0\n\t7 \n"),
        ),
        [LogRead("1", "a.log", "a.cursor", None, 100)],
    ),
    "resume from a bare number and from a newer generation": (
        both(
            write("a.log", b"old\nnew\n"),
            write("a.cursor", b"4"),
            write("b.cursor", b"4 4 0 1\n2 3 1 2\n1 2 1 1\n9 9 0 5\n"),
        ),
        [LogRead("1", "a.log", "a.cursor", None, 100), LogRead("2", "a.log", "b.cursor", None, 100)],
    ),
    "a file shorter than the position is a new generation": (
        both(write("a.log", b"fresh\n"), write("a.cursor", b"40 50 0 1\n")),
        [LogRead("1", "a.log", "a.cursor", None, 100), LogRead("2", "a.log", "b.cursor", 50, 100, committed=50)],
    ),
    "records: with data, always, compaction": (
        both(write("a.log", b"a\nb\n"), write("c.cursor", b"0 2 0 1\n" * 50)),
        [
            LogRead("1", "a.log", "a.cursor", 4, 100, committed=4),
            LogRead("2", "a.log", "b.cursor", 4, 100, committed=4, generation=2, runs=3, record=Record.ALWAYS),
            LogRead("3", "a.log", "c.cursor", 2, 100, committed=2, record=Record.COMPACT),
        ],
    ),
    "missing log, log that is a directory, cursor in a missing directory": (
        both(write("d/x", b""), write("a.log", b"x\n")),
        [
            LogRead("1", "missing.log", "a.cursor", None, 100),
            LogRead("2", "d", "b.cursor", 0, 100, record=Record.ALWAYS),
            LogRead("3", "a.log", "nowhere/c.cursor", 0, 100),
        ],
    ),
    "paths with spaces, quotes, dollars and a newline": (
        write('it\'s a "log" $(x)\n', b"x\ny\n"),
        [LogRead("1", 'it\'s a "log" $(x)\n', "cur $(x) 'q'", 0, 100)],
    ),
    "an empty log and an end already reached": (
        both(write("a.log", b""), write("b.log", b"x\n")),
        [LogRead("1", "a.log", "a.cursor", 0, 100), LogRead("2", "b.log", "b.cursor", 2, 100)],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_batch_reader_prints_and_records_exactly_what_the_per_job_reader_does(case: str, tmp_path: Path) -> None:
    make, reads = CASES[case]
    outcomes = []
    for name, script in (("per-job", per_job_script(reads)), ("batch", batch_script(reads))):
        root = tmp_path / name
        root.mkdir()
        make(root)
        done = run(script, root)
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        outcomes.append((done.returncode, done.stdout, files))

    assert outcomes[1] == outcomes[0]


def test_the_batch_reader_holds_back_a_line_that_ends_in_a_nul_byte(tmp_path: Path) -> None:
    # The per-job reader's shell drops NUL bytes from $(...) and so took such a chunk for whole lines.
    (tmp_path / "a.log").write_bytes(b"one\ntwo\x00")

    framed = parse_framed(run(batch_script([LogRead("1", "a.log", "a.cursor", 0, 100)]), tmp_path).stdout, TOKEN)

    assert framed.chunks["1"].data == b"one\n"
    assert (tmp_path / "a.cursor").read_bytes() == b"0 4 0 1\n"


def shim_path(directory: Path, *, perl: str | None, count: bool) -> str:
    """A PATH of the reader's tools (each exec counted in ``execs`` when ``count``), with ``perl``
    as given: ``"real"``, a script body, or ``None`` for a login node without Perl."""
    directory.mkdir()
    names = [*TOOLS, *(["perl"] if perl == "real" else [])]
    for name in names:
        target = shutil.which(name)
        assert target is not None
        shim = directory / name
        if count:
            shim.write_text(f'#!/bin/sh\necho {name} >> "{directory}/execs"\nexec {target} "$@"\n')
            shim.chmod(0o755)
        else:
            shim.symlink_to(target)
    if perl not in (None, "real"):
        (directory / "perl").write_text(f"#!/bin/sh\n{perl}\n")
        (directory / "perl").chmod(0o755)
    return str(directory)


def running_jobs(root: Path, count: int) -> list[LogRead]:
    reads = []
    for index in range(count):
        (root / f"{index}.log").write_bytes(f"line of job {index}\n".encode() * 20 + b"half")
        reads.append(LogRead(str(index), f"{index}.log", f"{index}.cursor", 100 if index % 2 else None, 1 << 20))
    return reads


def executed(directory: Path) -> list[str]:
    execs = directory / "execs"
    return execs.read_text().split() if execs.exists() else []


@pytest.mark.parametrize("jobs", [1, 60])
def test_one_poll_reads_every_running_job_with_one_process(jobs: int, tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    path = shim_path(tmp_path / "bin", perl="real", count=True)

    done = run(batch_script(running_jobs(root, jobs)), root, path)

    assert done.returncode == 0, done.stderr
    assert len(parse_framed(done.stdout, TOKEN).chunks) == jobs
    assert executed(tmp_path / "bin") == ["perl"]


def test_the_per_job_reader_it_replaces_starts_processes_for_every_job(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    path = shim_path(tmp_path / "bin", perl="real", count=True)

    run(per_job_script(running_jobs(root, 10)), root, path)

    assert len(executed(tmp_path / "bin")) >= 10 * 5


@pytest.mark.parametrize(
    "perl",
    [None, "exit 255", "exit 127"],
    ids=["no perl on the login node", "a perl that cannot compile the reader", "a perl that cannot start"],
)
def test_without_a_working_perl_the_per_job_reader_gives_the_same_answer(perl: str | None, tmp_path: Path) -> None:
    outcomes = []
    for name, perl_here in (("with perl", "real"), ("without", perl)):
        root = tmp_path / name
        root.mkdir()
        reads = running_jobs(root, 6)
        done = run(batch_script(reads), root, shim_path(tmp_path / f"bin {name}", perl=perl_here, count=False))
        files = {p.name: p.read_bytes() for p in sorted(root.iterdir())}
        outcomes.append((done.returncode, done.stdout, files))

    assert outcomes[1] == outcomes[0]
    assert outcomes[0][0] == 0


def test_a_perl_that_fails_while_reading_fails_the_poll_instead_of_reading_twice(tmp_path: Path) -> None:
    path = shim_path(tmp_path / "bin", perl="echo partial; exit 3", count=False)
    (tmp_path / "a.log").write_bytes(b"x\n")

    done = run(batch_script([LogRead("1", "a.log", "a.cursor", 0, 100)]), tmp_path, path)

    assert done.returncode != 0
    assert done.stdout == b"partial\n"
    assert not (tmp_path / "a.cursor").exists()


def test_the_batch_reader_is_clean_under_strict_and_warnings(tmp_path: Path) -> None:
    program = tmp_path / "reader.pl"
    program.write_text(remote_shell.BATCH_LOG_READER)

    done = subprocess.run(["perl", "-Mstrict", "-Mwarnings", "-c", str(program)], capture_output=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith(b"syntax OK")
