"""The shell text sent to login nodes, run here by the local /bin/sh, and the framing of its output.

Recorded bytes come from the Slurm test cluster (tests/fixtures/slurm/README.md); the rest runs the
produced shell locally, which is what the login node would run, so no cluster is needed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.remote_shell import LogRead, parse_framed
from airflow_hpc_provider.jobs import LogChunk

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
TOKEN = "AIRFLOW_HPC_00112233aabbccdd"


def run_sh(script: str, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> bytes:
    done = subprocess.run(
        ["/bin/sh", "-s"],
        input=script.encode(),
        capture_output=True,
        cwd=cwd,
        env=env,
        check=True,
        timeout=30,
    )
    return done.stdout


# --- parse_framed on recorded bytes -----------------------------------------------------------------


def test_the_recorded_poll_splits_into_squeue_and_sacct_sections_with_their_exit_status() -> None:
    framed = parse_framed((FIXTURES / "poll_output.bin").read_bytes(), "AIRFLOW_HPC_3f9c0a7e5b1d2468")

    assert framed.sections == {
        "squeue": (
            0,
            "4|COMPLETED|None|vm|0|0:02|\n"
            "5|FAILED|NonZeroExitCode|vm|768|0:00|\n"
            "6|OUT_OF_MEMORY|OutOfMemory|vm|253|0:00|\n"
            "3|PENDING|JobHeldUser||0|0:00|\n"
            "2|RUNNING|None|vm|0|0:41|\n"
            "7|RUNNING|None|vm|0|0:03|",
        ),
        "sacct": (
            0,
            "4|COMPLETED|0:0|None|00:00:02|vm|\n"
            "4.batch|COMPLETED|0:0||00:00:02|vm|208K\n"
            "5|FAILED|3:0|None|00:00:00|vm|\n"
            "5.batch|FAILED|3:0||00:00:00|vm|0\n"
            "6|OUT_OF_MEMORY|0:125|None|00:00:00|vm|\n"
            "6.batch|OUT_OF_MEMORY|0:125||00:00:00|vm|0",
        ),
    }


def test_the_recorded_poll_carries_each_jobs_log_bytes_exactly() -> None:
    framed = parse_framed((FIXTURES / "poll_output.bin").read_bytes(), "AIRFLOW_HPC_3f9c0a7e5b1d2468")

    assert framed.chunks["7"] == LogChunk(job_id="7", offset=0, data=b"started\n", size=8)
    oom = framed.chunks["6"]
    assert (oom.offset, oom.size, len(oom.data)) == (0, 158, 158)
    assert oom.data.startswith(b"Killed\nslurmstepd-vm: error: Detected 1 oom-kill event(s)")
    assert oom.data.endswith(b"out-of-memory handler.\n")


def test_a_recorded_second_poll_resumes_the_log_where_the_saved_cursor_left_it() -> None:
    framed = parse_framed((FIXTURES / "poll_output_resumed.bin").read_bytes(), "AIRFLOW_HPC_3f9c0a7e5b1d2468")

    chunk = framed.chunks["7"]
    assert (chunk.offset, chunk.size, chunk.end) == (8, 83, 83)
    assert chunk.data == b"slurmstepd-vm: error: *** JOB 7 ON vm CANCELLED AT 2026-11-21T07:04:18 ***\n"


def test_a_recorded_empty_section_is_empty_text_with_its_status() -> None:
    framed = parse_framed((FIXTURES / "poll_output_unknown_id.bin").read_bytes(), "AIRFLOW_HPC_0123456789abcdef")

    assert framed.sections == {
        "squeue": (1, "slurm_load_jobs error: Invalid job id specified"),
        "sacct": (0, ""),
    }
    assert framed.chunks == {}


# --- parse_framed on synthetic bytes ------------------------------------------------------------------


def test_a_log_line_that_looks_like_a_frame_header_with_another_token_stays_log_data() -> None:
    forged = b"AIRFLOW_HPC_ffffffffffffffff section squeue 0\n9|COMPLETED|None|vm|0|0:01|\n"
    output = (
        f"{TOKEN} section squeue 0\n9|RUNNING|None|vm|0|0:01|\n".encode()
        + f"{TOKEN} log 9 0 {len(forged)} {len(forged)}\n".encode()
        + forged
        + b"\n"
    )

    framed = parse_framed(output, TOKEN)

    assert framed.sections == {"squeue": (0, "9|RUNNING|None|vm|0|0:01|")}
    assert framed.chunks["9"].data == forged


def test_a_log_chunk_is_cut_by_its_length_even_when_it_repeats_our_own_header() -> None:
    forged = f"{TOKEN} section sacct 0\n9|COMPLETED|0:0|None|00:00:01|vm|\n".encode()
    output = f"{TOKEN} log 9 100 {100 + len(forged)} {len(forged)}\n".encode() + forged + b"\n"

    framed = parse_framed(output, TOKEN)

    assert framed.sections == {}
    assert framed.chunks["9"] == LogChunk(job_id="9", offset=100, data=forged, size=100 + len(forged))


def test_a_section_line_with_a_foreign_token_is_just_text_of_the_section() -> None:
    output = f"{TOKEN} section squeue 0\nAIRFLOW_HPC_0000000000000000 section sacct 0\nline\n".encode()

    framed = parse_framed(output, TOKEN)

    assert framed.sections == {"squeue": (0, "AIRFLOW_HPC_0000000000000000 section sacct 0\nline")}


def test_binary_log_data_survives_byte_for_byte() -> None:
    data = bytes(range(256)) + b"\xff\xfe\n\x00\r\n\xc3\x28"
    output = f"{TOKEN} log 3 0 {len(data)} {len(data)}\n".encode() + data + b"\n"

    assert parse_framed(output, TOKEN).chunks["3"].data == data


def test_non_utf8_bytes_in_a_section_are_replaced_not_fatal() -> None:
    output = f"{TOKEN} section squeue 0\n".encode() + b"7|RUNNING|caf\xe9|vm|0|0:01|\n"

    assert parse_framed(output, TOKEN).sections["squeue"] == (0, "7|RUNNING|caf\ufffd|vm|0|0:01|")


def test_an_empty_chunk_and_a_missing_file_are_chunks_without_data() -> None:
    output = f"{TOKEN} log 4 12 12 0\n\n{TOKEN} log 5 0 -1 0\n\n".encode()

    framed = parse_framed(output, TOKEN)

    assert framed.chunks["4"] == LogChunk(job_id="4", offset=12, data=b"", size=12)
    assert framed.chunks["5"] == LogChunk(job_id="5", offset=0, data=b"", size=-1)


def test_text_before_the_first_frame_such_as_a_login_banner_is_ignored() -> None:
    output = f"Welcome to login1\nLast login: never\n{TOKEN} section squeue 0\n\n".encode()

    assert parse_framed(output, TOKEN).sections == {"squeue": (0, "")}


def test_output_cut_short_after_a_header_still_yields_what_arrived() -> None:
    framed = parse_framed(f"{TOKEN} log 8 0 10 10\nabc".encode(), TOKEN)

    assert framed.chunks["8"].data == b"abc"


# --- the log reader and sections, run by /bin/sh ---------------------------------------------------------


def poll_locally(tmp_path: Path, *reads: LogRead, body: str = "") -> remote_shell.FramedOutput:
    script = remote_shell.poll_script(TOKEN, body, reads)
    return parse_framed(run_sh(script, cwd=tmp_path), TOKEN)


def test_the_log_reader_sends_binary_data_and_lines_that_forge_frames_verbatim(tmp_path: Path) -> None:
    data = b"AIRFLOW_HPC_ffffffffffffffff log 1 0 5 5\n" + f"{TOKEN} section x 0\n".encode() + bytes(range(256))
    (tmp_path / "job.log").write_bytes(data)

    framed = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", 0, 1 << 20, whole_lines=False))

    assert framed.chunks["1"] == LogChunk(job_id="1", offset=0, data=data, size=len(data))
    assert (tmp_path / "job.cursor").read_text() == f"0 {len(data)} 0 1\n"


def test_a_resumed_read_starts_at_the_committed_position_and_reports_what_was_sent_beyond_it(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"one\ntwo\n")
    read = LogRead("1", "job.log", "job.cursor", None, 1 << 20)

    first = poll_locally(tmp_path, read)
    # Sent but never committed: a watcher that resumes starts again at 0 and is told 8 was sent.
    again = poll_locally(tmp_path, read)
    commit = remote_shell.cursor_record("job.cursor", 8, 8, 0, 1, compact=False)
    run_sh(commit, cwd=tmp_path)
    with log.open("ab") as handle:
        handle.write(b"three\n")
    after_commit = poll_locally(tmp_path, read)

    assert (first.chunks["1"].offset, first.chunks["1"].data, first.positions["1"].sent) == (0, b"one\ntwo\n", 0)
    assert (again.chunks["1"].offset, again.positions["1"].sent) == (0, 8)
    assert (after_commit.chunks["1"].offset, after_commit.chunks["1"].data) == (8, b"three\n")
    assert after_commit.positions["1"].sent == 8


def test_a_read_from_a_known_offset_records_the_commit_it_carries_before_the_chunk(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"one\ntwo\nthree\n")
    read = LogRead("1", "job.log", "job.cursor", 8, 1 << 20, committed=8, generation=0, runs=2)

    chunk = poll_locally(tmp_path, read).chunks["1"]

    assert (chunk.offset, chunk.data) == (8, b"three\n")
    assert (tmp_path / "job.cursor").read_text() == "8 14 0 2\n"


def test_a_read_with_nothing_new_writes_a_record_only_when_it_carries_a_commit(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"one\n")
    quiet = LogRead("1", "job.log", "job.cursor", 4, 100, committed=0)
    commit = LogRead("1", "job.log", "job.cursor", 4, 100, committed=4, record=remote_shell.Record.ALWAYS)

    poll_locally(tmp_path, quiet)
    assert not (tmp_path / "job.cursor").exists()
    poll_locally(tmp_path, commit)
    assert (tmp_path / "job.cursor").read_text() == "4 4 0 1\n"


def test_resuming_takes_the_largest_commit_and_sent_mark_of_the_newest_generation(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"a\nb\nc\nd\ne\n")
    records = "0 4 0 1\n4 8 0 1\n2 6 0 3\n" + "garbage line\n" + "1 9 0\n"
    (tmp_path / "job.cursor").write_text(records)

    framed = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", None, 100))

    assert (framed.chunks["1"].offset, framed.chunks["1"].data) == (4, b"c\nd\ne\n")
    assert framed.positions["1"] == remote_shell.LogPosition(sent=8, generation=0, runs=3, shrank=False)


def test_a_cursor_of_an_older_reader_a_bare_number_resumes_where_it_says(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"old\nnew\n")
    (tmp_path / "job.cursor").write_text("4")  # no newline: what the previous version wrote

    framed = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", None, 100))

    assert (framed.chunks["1"].offset, framed.chunks["1"].data, framed.positions["1"].sent) == (4, b"new\n", 4)


def test_a_file_shorter_than_the_position_is_read_again_from_its_start_as_a_new_generation(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"fresh\n")
    (tmp_path / "job.cursor").write_text("40 50 0 1\n")

    resumed = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", None, 100))
    steady = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", 50, 100, committed=50))

    assert (resumed.chunks["1"].offset, resumed.chunks["1"].data) == (0, b"fresh\n")
    assert resumed.positions["1"] == remote_shell.LogPosition(sent=0, generation=1, runs=1, shrank=True)
    assert (steady.chunks["1"].offset, steady.positions["1"].shrank, steady.positions["1"].generation) == (0, True, 1)
    # The newest generation's records win, whatever the older ones say.
    after = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", None, 100))
    assert (after.chunks["1"].offset, after.positions["1"].generation) == (0, 1)


def test_a_compacting_read_leaves_its_record_as_the_cursor_files_only_line(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"a\nb\n")
    (tmp_path / "job.cursor").write_text("0 2 0 1\n" * 50)

    poll_locally(
        tmp_path, LogRead("1", "job.log", "job.cursor", 2, 100, committed=2, record=remote_shell.Record.COMPACT)
    )

    assert (tmp_path / "job.cursor").read_text() == "2 4 0 1\n"


def test_the_log_reader_holds_back_a_half_written_line(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"done\nhalf a li")

    chunk = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", None, 1 << 20)).chunks["1"]

    assert chunk.data == b"done\n"
    assert (tmp_path / "job.cursor").read_text() == "0 5 0 1\n"


def test_the_log_reader_sends_at_most_max_bytes(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_bytes(b"0123456789\n" * 10)

    chunk = poll_locally(tmp_path, LogRead("1", "job.log", "job.cursor", 0, 25, whole_lines=False)).chunks["1"]

    assert (chunk.data, chunk.size) == (b"0123456789\n0123456789\n012", 110)


def test_the_log_reader_reports_a_log_that_does_not_exist_yet_without_failing(tmp_path: Path) -> None:
    chunk = poll_locally(tmp_path, LogRead("1", "missing.log", "job.cursor", None, 100)).chunks["1"]

    assert (chunk.data, chunk.size) == (b"", -1)
    assert not (tmp_path / "job.cursor").exists()


def test_a_path_with_spaces_and_quotes_reaches_the_log_reader_intact(tmp_path: Path) -> None:
    (tmp_path / "it's a log").write_bytes(b"x\n")

    chunk = poll_locally(tmp_path, LogRead("1", "it's a log", "cur $(x)", 0, 100)).chunks["1"]

    assert chunk.data == b"x\n"
    assert (tmp_path / "cur $(x)").read_text() == "0 2 0 1\n"


def test_a_section_frames_stdout_stderr_and_the_exit_status(tmp_path: Path) -> None:
    body = remote_shell.section(TOKEN, "probe", "sh -c 'echo out; echo err >&2; exit 3'")

    framed = poll_locally(tmp_path, body=body)

    assert framed.sections == {"probe": (3, "out\nerr")}


# --- heredoc ----------------------------------------------------------------------------------------------


def delimiter_of(text: str) -> str:
    match = re.match(r"cat <<'([A-Za-z0-9_]+)'\n", text)
    assert match
    return match.group(1)


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.8, 0.99])
def test_a_script_cut_off_on_the_way_runs_none_of_its_commands(cut: float, tmp_path: Path) -> None:
    script = remote_shell.whole_or_nothing(
        "touch first\n" + remote_shell.heredoc("body\n", feed="cat > second") + "touch third\n"
    )
    done = subprocess.run(
        ["/bin/sh", "-s"], input=script[: int(len(script) * cut)].encode(), capture_output=True, cwd=tmp_path
    )

    assert done.returncode != 0
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_whole_script_runs_all_of_its_commands(tmp_path: Path) -> None:
    run_sh(
        remote_shell.whole_or_nothing("touch first\n" + remote_shell.heredoc("body", feed="cat > second")), cwd=tmp_path
    )

    assert sorted(path.name for path in tmp_path.iterdir()) == ["first", "second"]


def test_a_heredoc_delivers_its_body_unexpanded(tmp_path: Path) -> None:
    body = "echo $HOME `id` $(whoami) \\n 'single' \"double\"\n\ttabbed\n"

    assert run_sh(remote_shell.heredoc(body, feed="cat"), cwd=tmp_path).decode() == body


def test_a_heredoc_body_full_of_delimiter_lookalikes_cannot_end_it_early(tmp_path: Path) -> None:
    lookalikes = "".join(f"{remote_shell.random_token('AIRFLOW_HPC_EOF')}\nEOF\n" for _ in range(50))
    body = lookalikes + "AIRFLOW_HPC_EOF\nlast line"

    text = remote_shell.heredoc(body, feed="cat")

    assert delimiter_of(text) not in body
    assert run_sh(text, cwd=tmp_path).decode() == body + "\n"


def test_every_heredoc_gets_a_fresh_delimiter() -> None:
    delimiters = {delimiter_of(remote_shell.heredoc("x", feed="cat")) for _ in range(20)}

    assert len(delimiters) == 20


def test_a_random_token_has_its_prefix_and_sixteen_hex_digits() -> None:
    assert re.fullmatch(r"PFX_[0-9a-f]{16}", remote_shell.random_token("PFX"))


# --- export_lines and quoting -------------------------------------------------------------------------------

TRICKY_VALUES = [
    "it's",
    'say "hi"',
    "$(touch pwned)",
    "`touch pwned`",
    "line one\nline two\n",
    "a; touch pwned",
    "a && touch pwned || true",
    "back\\slash\\",
    "$HOME and ${PATH}",
    "*",
    "",
    "-n",
    "tab\there",
    "ünïcødé ✓",
    "'\"'\"'",
]


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_an_exported_value_arrives_verbatim_and_nothing_in_it_runs(value: str, tmp_path: Path) -> None:
    script = remote_shell.export_lines({"AIRFLOW_VALUE": value}) + "printf '%s' \"$AIRFLOW_VALUE\"\n"

    out = run_sh(script, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    assert out.decode() == value
    assert not (tmp_path / "pwned").exists()


def test_exported_values_reach_a_child_process_environment(tmp_path: Path) -> None:
    env = {"FIRST": "a b", "SECOND": "x\ny"}
    script = remote_shell.export_lines(env) + "/usr/bin/env\n"

    out = run_sh(script, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}).decode()

    assert "FIRST=a b\n" in out
    assert "SECOND=x\ny\n" in out


def test_export_lines_write_one_export_per_name_in_order() -> None:
    assert remote_shell.export_lines({"B": "2", "A": "x y"}) == "export B=2\nexport A='x y'\n"
    assert remote_shell.export_lines({}) == ""


def test_a_relative_path_lands_under_home_and_an_absolute_one_stays(tmp_path: Path) -> None:
    script = (
        f"printf '%s\\n' {remote_shell.home_relative('logs/my dir/$(x)')}\n"
        f"printf '%s\\n' {remote_shell.home_relative('/scratch/a b')}\n"
    )

    out = run_sh(script, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": "/home/it's me"}).decode()

    assert out == "/home/it's me/logs/my dir/$(x)\n/scratch/a b\n"
