"""The POSIX shell pieces every dialect sends to a login node, and the framing of what comes back.

Remote work goes over stdin to ``sh -s`` (never on the command line: other users on a login node see
command lines in ``ps``), so the login shell (bash, tcsh, ...) never parses our text. Every value
from a user is quoted with :func:`shlex.quote`; heredoc delimiters are random per use.

One poll is one script whose output is framed by a random token: text sections (the scheduler's
answers) and byte-exact log chunks, so a log line can never be mistaken for a frame.
"""

from __future__ import annotations

import enum
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


# The log reader: ``_log ID OFFSET GEN COMMITTED RUNS RECORD LOG CURSOR MAX WHOLE``.
#
# Reads at most MAX bytes of LOG from OFFSET ('-': resume from the records in CURSOR). With WHOLE = 1
# (the job may still be writing) the chunk stops after its last newline, so no line is cut in two.
#
# CURSOR is append-only: one record ``COMMITTED SENT GEN RUNS`` per line, each a single small
# O_APPEND write by a shell builtin (no process, no rename). COMMITTED is the position up to which
# the output is known to be in the task log; SENT the end of the furthest chunk a watcher printed
# (written just BEFORE the chunk is printed); GEN counts the times the file was found shorter than
# the cursor (rewritten from its start); RUNS the scheduler runs already announced in the task log.
# A reader resuming takes, in the newest GEN, the largest COMMITTED and SENT: it starts at
# COMMITTED, and [COMMITTED, SENT) is what a previous watcher handed over but never confirmed.
# A record is written when a chunk is sent, or always with RECORD = 1 (a commit); RECORD = 2 writes
# it as the file's only record (compaction, rare).
LOG_READER = r"""
_log() {
  _o=$2 _g=$3 _c=$4 _r=$5 _x=0
  if [ "$_o" = - ]; then
    _c=0 _s=0 _g=0 _r=1
    if [ -f "$8" ]; then eval "$(awk '
      BEGIN { g = -1; c = 0; s = 0; r = 1 }
      NF == 1 && $1 ~ /^[0-9]+$/ {
        v = $1 + 0
        if (g < 0) { g = 0; c = v; s = v } else if (g == 0) { if (v > c) c = v; if (v > s) s = v }
        next
      }
      NF == 4 && $0 ~ /^[0-9]+ [0-9]+ [0-9]+ [0-9]+$/ {
        if ($3 + 0 > g) { g = $3 + 0; c = $1 + 0; s = $2 + 0; r = $4 + 0 }
        else if ($3 + 0 == g) { if ($1 + 0 > c) c = $1 + 0; if ($2 + 0 > s) s = $2 + 0; if ($4 + 0 > r) r = $4 + 0 }
      }
      END { if (g < 0) g = 0; if (r < 1) r = 1; printf "_c=%.0f _s=%.0f _g=%.0f _r=%.0f\n", c, s, g, r }
    ' "$8" 2>/dev/null)"; fi
    _o=$_c
  else
    _s=$_o
  fi
  _z=$( { wc -c < "$7"; } 2>/dev/null) || _z=-1
  _z=$(printf '%s' "$_z" | tr -d ' ')
  if [ "$_z" -ge 0 ] && [ "$_z" -lt "$_o" ]; then _g=$((_g + 1)); _o=0; _c=0; _s=0; _x=1; fi
  _n=0
  if [ "$_z" -gt "$_o" ]; then _n=$((_z - _o)); if [ "$_n" -gt "$9" ]; then _n=$9; fi; fi
  if [ "$_n" -gt 0 ] && [ "${10}" = 1 ] && [ -n "$(tail -c +$((_o + _n)) -- "$7" | head -c 1 | tr -d '\n')" ]; then
    _k=$(tail -c +$((_o + 1)) -- "$7" | head -c "$_n" | sed '$d' | wc -c | tr -d ' ')
    if [ "$_k" -gt 0 ]; then _n=$_k; fi
  fi
  if [ "$_n" -gt 0 ] || [ "$6" != 0 ]; then
    if [ "$6" = 2 ]; then
      printf '%s %s %s %s\n' "$_c" $((_o + _n)) "$_g" "$_r" > "$8.tmp" && mv -f -- "$8.tmp" "$8"
    else
      printf '%s %s %s %s\n' "$_c" $((_o + _n)) "$_g" "$_r" >> "$8"
    fi
  fi
  printf '%s log %s %s %s %s %s %s %s %s\n' "$_t" "$1" "$_o" "$_z" "$_n" "$_s" "$_g" "$_r" "$_x"
  if [ "$_n" -gt 0 ]; then tail -c +$((_o + 1)) -- "$7" | head -c "$_n"; fi
  printf '\n'
}
"""

# The same reader for all of a poll's reads in ONE process (Perl), so a poll costs the login node a
# constant number of processes however many jobs run (the shell reader above starts about fifteen per
# job). Same arguments, records and output as ``_log``, byte for byte; each read is one input line
# after the token line: ``ID OFFSET GEN COMMITTED RUNS RECORD LOG CURSOR MAX WHOLE``, with ID, LOG
# and CURSOR in hex (paths may hold any byte but NUL). The size comes from the same open file the
# chunk is read from, and a chunk is as long as what was actually read (a file truncated between
# the two is never announced longer than it is). Written for Perl 5.8 and up, without modules.
# A runtime failure exits 3; 255 (no compilation, or no working perl) means nothing was read or
# written, so the shell reader can take over.
BATCH_LOG_READER = r"""
binmode STDOUT; binmode DATA;
sub resume {
  my ($path) = @_;
  my ($g, $c, $s, $r) = (-1, 0, 0, 1);
  my $fh;
  if (-f $path && open($fh, '<', $path)) {
    binmode $fh;
    while (defined(my $line = <$fh>)) {
      $line =~ s/\n\z//;
      (my $trimmed = $line) =~ s/^[ \t]+//;
      my @f = split /[ \t]+/, $trimmed;
      if (@f == 1 && $f[0] =~ /^[0-9]+\z/) {
        my $v = $f[0] + 0;
        if ($g < 0) { ($g, $c, $s) = (0, $v, $v) }
        elsif ($g == 0) { $c = $v if $v > $c; $s = $v if $v > $s }
        next;
      }
      if (@f == 4 && $line =~ /^([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+)\z/) {
        if ($3 > $g) { ($g, $c, $s, $r) = ($3 + 0, $1 + 0, $2 + 0, $4 + 0) }
        elsif ($3 == $g) { $c = $1 + 0 if $1 > $c; $s = $2 + 0 if $2 > $s; $r = $4 + 0 if $4 > $r }
      }
    }
    close $fh;
  }
  $g = 0 if $g < 0;
  $r = 1 if $r < 1;
  return map { sprintf('%.0f', $_) } ($c, $s, $g, $r);
}
sub record {
  my ($path, $text, $compact) = @_;
  my $fh;
  if ($compact) {
    if (open($fh, '>', "$path.tmp")) {
      binmode $fh;
      my $ok = syswrite($fh, $text) == length($text);
      $ok = close($fh) && $ok;
      rename("$path.tmp", $path) if $ok;
    }
  } elsif (open($fh, '>>', $path)) {
    binmode $fh;
    syswrite($fh, $text);
    close $fh;
  }
}
sub read_one {
  my ($t, $line) = @_;
  my ($id, $o, $g, $c, $r, $rec, $log, $cur, $max, $whole) = split / /, $line;
  ($id, $log, $cur) = map { pack('H*', $_) } ($id, $log, $cur);
  my ($s, $x) = (0, 0);
  if ($o eq '-') { ($c, $s, $g, $r) = resume($cur); $o = $c } else { $s = $o }
  my ($z, $fh) = (-1, undef);
  if (open($fh, '<', $log)) {
    binmode $fh;
    if (-d $fh) { close $fh; undef $fh } else { $z = (stat $fh)[7] }
  } else { undef $fh }
  if ($z >= 0 && $z < $o) { $g++; ($o, $c, $s, $x) = (0, 0, 0, 1) }
  my ($n, $data) = (0, '');
  if ($z > $o) { $n = $z - $o; $n = $max if $n > $max }
  if ($n > 0) {
    $n = 0 unless seek($fh, $o, 0);
    while (length($data) < $n) {
      my $got = read($fh, $data, $n - length($data), length($data));
      last unless $got;
    }
    $n = length($data);
  }
  close $fh if defined $fh;
  if ($n > 0 && $whole eq '1' && substr($data, -1) ne "\n") {
    my $k = rindex($data, "\n") + 1;
    if ($k > 0) { $n = $k; $data = substr($data, 0, $k) }
  }
  if ($n > 0 || $rec ne '0') { record($cur, sprintf("%s %s %s %s\n", $c, $o + $n, $g, $r), $rec eq '2') }
  print "$t log $id $o $z $n $s $g $r $x\n", $data, "\n";
}
my $ok = eval {
  my $t = <DATA>;
  chomp $t;
  while (defined(my $line = <DATA>)) { chomp $line; read_one($t, $line) if length $line }
  1;
};
if (!$ok) { print STDERR "log reader: $@"; exit 3 }
exit 0;
"""

# Records written before compaction: a cursor file stays a few tens of kilobytes at most.
RECORDS_BEFORE_COMPACTION = 1000


class Record(enum.IntEnum):
    """When the reader writes a cursor record (see ``LOG_READER``)."""

    WITH_DATA = 0
    ALWAYS = 1
    COMPACT = 2


@dataclass(frozen=True)
class LogRead:
    """Read a job's output from ``offset`` (``None``: resume from the cursor records) up to ``max_bytes``.

    ``committed``, ``generation`` and ``runs`` go into the cursor record the read writes (ignored when
    resuming: the records on the cluster supply them).
    """

    job_id: str
    log_path: str
    cursor_path: str
    offset: int | None
    max_bytes: int
    whole_lines: bool = True
    committed: int = 0
    generation: int = 0
    runs: int = 1
    record: Record = Record.WITH_DATA

    def call(self) -> str:
        offset = "-" if self.offset is None else str(int(self.offset))
        return (
            # Exec sessions start in $HOME, so relative paths resolve there, as sbatch's do.
            f"_log {quote(self.job_id)} {offset} {int(self.generation)} {int(self.committed)} {int(self.runs)} "
            f"{int(self.record)} {quote(self.log_path)} {quote(self.cursor_path)} {int(self.max_bytes)} "
            f"{int(self.whole_lines)}\n"
        )

    def batch_line(self) -> str:
        """The same read as one input line of ``BATCH_LOG_READER`` (values in hex: nothing to quote)."""
        offset = "-" if self.offset is None else str(int(self.offset))
        return (
            f"{self.job_id.encode().hex()} {offset} {int(self.generation)} {int(self.committed)} {int(self.runs)} "
            f"{int(self.record)} {self.log_path.encode().hex()} {self.cursor_path.encode().hex()} "
            f"{int(self.max_bytes)} {int(self.whole_lines)}\n"
        )


def log_reads(token: str, reads: Sequence[LogRead]) -> str:
    """Shell text that runs ``reads`` (after ``_t`` and ``LOG_READER`` are defined).

    With Perl on the login node, all of them in one process (``BATCH_LOG_READER``); without it, or
    when it cannot run the program, one ``_log`` call each. Either way the same output and records.
    """
    if not reads:
        return ""
    program = BATCH_LOG_READER + "__END__\n" + token + "\n" + "".join(read.batch_line() for read in reads)
    per_job = "".join(read.call() for read in reads)
    return (
        "if command -v perl >/dev/null 2>&1; then\n"
        # A user's Perl settings must not change how bytes are read or printed.
        + heredoc(program, feed="PERL5OPT= PERLIO= perl -C0")
        + "_p=$?\nelse _p=127; fi\n"
        + f'case $_p in\n126|127|255)\n{per_job};;\n*) [ "$_p" = 0 ];;\nesac\n'
    )


def cursor_record(cursor_path: str, committed: int, sent: int, generation: int, runs: int, *, compact: bool) -> str:
    """A shell line that writes one cursor record without reading anything (a commit)."""
    record = f"printf '%s %s %s %s\\n' {int(committed)} {int(sent)} {int(generation)} {int(runs)}"
    if compact:
        temporary = quote(cursor_path + ".tmp")
        return f"{record} > {temporary} && mv -f -- {temporary} {quote(cursor_path)}\n"
    return f"{record} >> {quote(cursor_path)}\n"


def whole_or_nothing(script: str) -> str:
    """``script`` as one brace group: a shell reading it from stdin runs nothing until it has read
    the closing brace, so a script cut off on the way (a dropped link) is a syntax error, never half
    a submission or half a cursor write."""
    return "{\n" + script + ("" if script.endswith("\n") else "\n") + "}\n"


def section(token: str, name: str, command: str) -> str:
    """Run ``command`` and frame its output (stdout and stderr) and exit status as section ``name``."""
    return f'_r=$( {{ {command}; }} 2>&1); _rc=$?\nprintf \'%s section {name} %s\\n%s\\n\' "$_t" "$_rc" "$_r"\n'


@dataclass(frozen=True)
class LogPosition:
    """What the reader said of the cursor beside a chunk (see ``LOG_READER``).

    ``sent``: on a resumed read, the furthest end an earlier watcher sent (more than the chunk's
    offset when it handed over lines it never confirmed); otherwise the chunk's offset.
    ``shrank``: the file was shorter than the position, so it is read again from its start.
    """

    sent: int
    generation: int = 0
    runs: int = 1
    shrank: bool = False


@dataclass
class FramedOutput:
    sections: dict[str, tuple[int, str]] = field(default_factory=dict)
    chunks: dict[str, LogChunk] = field(default_factory=dict)
    positions: dict[str, LogPosition] = field(default_factory=dict)


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
            job_id, offset, size, count, *marks = rest.split(" ")
            length = int(count)
            data = output[position : position + length]
            position += length + 1  # the newline printed after every chunk
            result.chunks[job_id] = LogChunk(job_id=job_id, offset=int(offset), data=data, size=int(size))
            # Older readers printed four fields: no marks, a position of their own.
            sent, generation, runs, shrank = marks[:4] if len(marks) >= 4 else (offset, "0", "1", "0")
            result.positions[job_id] = LogPosition(
                sent=int(sent), generation=int(generation), runs=int(runs), shrank=shrank == "1"
            )
            continue
        if current is not None:
            lines.append(line.decode(errors="replace"))
    close_section()
    return result


def poll_script(token: str, body: str, reads: Sequence[LogRead]) -> str:
    return f"_t={token}\n{LOG_READER}{body}" + log_reads(token, reads)
