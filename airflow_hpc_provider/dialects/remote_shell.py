"""The POSIX shell pieces every dialect sends to a login node, and the framing of what comes back.

Remote work goes over stdin to ``sh -s`` (never on the command line: other users on a login node see
command lines in ``ps``), so the login shell (bash, tcsh, ...) never parses our text. Every value
from a user is quoted with :func:`shlex.quote`; heredoc delimiters are random per use.

One poll is one script whose output is framed by a random token: text sections (the scheduler's
answers) and byte-exact log chunks, so a log line can never be mistaken for a frame.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from airflow_hpc_provider.jobs import LogChunk

quote = shlex.quote


def random_token(prefix: str = "AIRFLOW_HPC") -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def heredoc(body: str, *, feed: str) -> str:
    """``<feed> <<'DELIM'`` + body + ``DELIM``: the quoted delimiter stops all expansion in the body."""
    delimiter = random_token("AIRFLOW_HPC_EOF")
    while delimiter in body:  # astronomically unlikely; still never let the body end the heredoc
        delimiter = random_token("AIRFLOW_HPC_EOF")
    if not body.endswith("\n"):
        body += "\n"
    return f"{feed} <<'{delimiter}'\n{body}{delimiter}\n"


def export_lines(env: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines; the values travel on stdin and are never echoed."""
    return "".join(f"export {name}={quote(value)}\n" for name, value in env.items())


def home_relative(path: str) -> str:
    """A path for the remote shell: relative paths are under the login user's home."""
    if path.startswith("/"):
        return quote(path)
    return '"$HOME"/' + quote(path)


# Reads up to $5 bytes of file $3 from offset $2 ('-' = the offset saved in cursor file $4). With $6 = 1
# (the job may still be writing) the chunk stops after its last newline, so no line is cut in two.
# The new offset is saved in $4 BEFORE the chunk is printed: a watcher restarted from scratch resumes
# exactly after what was sent, so no line reaches the task log twice.
LOG_READER = r"""
_log() {
  if [ "$2" = - ]; then _o=$(cat -- "$4" 2>/dev/null) || _o=0; else _o=$2; fi
  case $_o in ''|*[!0-9]*) _o=0;; esac
  _s=$( { wc -c < "$3"; } 2>/dev/null) || _s=-1
  _s=$(printf '%s' "$_s" | tr -d ' ')
  _n=0
  if [ "$_s" -gt "$_o" ]; then _n=$((_s - _o)); if [ "$_n" -gt "$5" ]; then _n=$5; fi; fi
  if [ "$_n" -gt 0 ] && [ "$6" = 1 ] && [ -n "$(tail -c +$((_o + _n)) -- "$3" | head -c 1 | tr -d '\n')" ]; then
    _k=$(tail -c +$((_o + 1)) -- "$3" | head -c "$_n" | sed '$d' | wc -c | tr -d ' ')
    if [ "$_k" -gt 0 ]; then _n=$_k; fi
  fi
  if [ "$_n" -gt 0 ]; then
    printf '%s' $((_o + _n)) > "$4.tmp" && mv -f -- "$4.tmp" "$4"
  fi
  printf '%s log %s %s %s %s\n' "$_t" "$1" "$_o" "$_s" "$_n"
  if [ "$_n" -gt 0 ]; then tail -c +$((_o + 1)) -- "$3" | head -c "$_n"; fi
  printf '\n'
}
"""


@dataclass(frozen=True)
class LogRead:
    """Read a job's output from ``offset`` (``None``: from the saved cursor) up to ``max_bytes``."""

    job_id: str
    log_path: str
    cursor_path: str
    offset: int | None
    max_bytes: int
    whole_lines: bool = True

    def call(self) -> str:
        offset = "-" if self.offset is None else str(self.offset)
        return (
            # Exec sessions start in $HOME, so relative paths resolve there, as sbatch's do.
            f"_log {quote(self.job_id)} {offset} {quote(self.log_path)} "
            f"{quote(self.cursor_path)} {self.max_bytes} {int(self.whole_lines)}\n"
        )


def section(token: str, name: str, command: str) -> str:
    """Run ``command`` and frame its output (stdout and stderr) and exit status as section ``name``."""
    return f'_r=$( {{ {command}; }} 2>&1); _rc=$?\nprintf \'%s section {name} %s\\n%s\\n\' "$_t" "$_rc" "$_r"\n'


@dataclass
class FramedOutput:
    sections: dict[str, tuple[int, str]] = field(default_factory=dict)
    chunks: dict[str, LogChunk] = field(default_factory=dict)


_HEADER = re.compile(rb"^(\S+) (section|log) (.*)$")


def parse_framed(output: bytes, token: str) -> FramedOutput:
    """Split a poll's output into named text sections and byte-exact log chunks."""
    result = FramedOutput()
    position = 0
    current: str | None = None
    lines: list[str] = []
    status = 0
    expected = token.encode()

    def close_section() -> None:
        if current is not None:
            result.sections[current] = (status, "\n".join(lines).strip("\n"))

    while position < len(output):
        end = output.find(b"\n", position)
        if end < 0:
            end = len(output)
        line = output[position:end]
        position = end + 1
        header = _HEADER.match(line)
        if header and header.group(1) == expected:
            close_section()
            current, lines = None, []
            kind, rest = header.group(2), header.group(3).decode()
            if kind == b"section":
                name, _, rc = rest.partition(" ")
                current, status = name, int(rc or 0)
                continue
            job_id, offset, size, count = rest.split(" ")
            length = int(count)
            data = output[position : position + length]
            position += length + 1  # the newline printed after every chunk
            result.chunks[job_id] = LogChunk(job_id=job_id, offset=int(offset), data=data, size=int(size))
            continue
        if current is not None:
            lines.append(line.decode(errors="replace"))
    close_section()
    return result


def poll_script(token: str, body: str, reads: Sequence[LogRead]) -> str:
    return f"_t={token}\n{LOG_READER}{body}" + "".join(read.call() for read in reads)
