"""What a batch script or an option asks the scheduler for, read the way the schedulers read it.

Used to refuse, before anything is submitted, what this provider cannot watch as one job: job
arrays and heterogeneous jobs (a task would follow one element and could call the whole a
success on that element's word), and the options it sets itself.

How the schedulers read their directives (checked on the test cluster, Slurm 22.05 with the
``slurm-wlm-torque`` wrappers, unless said otherwise):

* ``sbatch`` reads ``#SBATCH`` lines (and ``#SLURM``, with a warning) only in the script's header:
  up to the first line whose first non-blank character is not ``#``. Several options may share a
  line; quotes group; ``#`` after a blank starts a comment; the option may follow the magic word
  without a blank (``#SBATCH--array=1-2``); long options may be abbreviated (``--arr=1-2``); short
  options cluster (``-Ha1-2`` is ``--hold --array=1-2``). A line with blanks before ``#SBATCH`` is a
  comment.
* ``sbatch`` also reads ``#PBS`` lines, anywhere in the script, even after commands; ``-t`` and
  ``-J`` make a job array there, as they do for Torque (``-t``) and PBS Pro (``-J``), which read
  ``#PBS`` lines up to the first command.
* Grid Engine's ``qsub`` reads ``#$`` lines; options are whole words (``-t 1-3``, ``-pe smp 2``),
  never clustered, and ``-t`` makes a job array. It reads neither ``#SBATCH`` nor ``#PBS`` lines,
  and ``sbatch`` and the PBS qsubs read no ``#$`` lines, so each operator asks only about its own
  families (:func:`multi_job_requests`).
* ``sbatch`` reads its options from ``SBATCH_*`` variables too (``SBATCH_ARRAY_INX`` makes an
  array): see :mod:`airflow_hpc_provider.resources` for the environment names that are refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.errors import JobSpecError

# sbatch short options that take an argument (the rest of a cluster is that argument).
_SBATCH_SHORT_WITH_ARGUMENT = frozenset("aAbBcCdDeFGiJkLmMnNopqStwx")
# qsub short options that take an argument, in Torque, PBS Pro and sbatch's reading of #PBS lines.
# 'n' is a flag in Torque and unknown elsewhere: it is read as a flag, so '-nt' still shows '-t'.
_QSUB_SHORT_WITH_ARGUMENT = frozenset("aAbcCdDejJkKlLmMNopPqrRStTuvwW")

SLURM_ARRAY = ("--array", "-a")
PBS_ARRAY = ("-t", "-J")
SGE_ARRAY = ("-t",)
# A line of its own in a script separates the components of a heterogeneous job.
_HETJOB_WORDS = frozenset({"hetjob", "packjob"})

_SBATCH_MAGIC = re.compile(r"^#(SBATCH|SLURM)")
_PBS_MAGIC = re.compile(r"^#PBS")
_SGE_MAGIC = re.compile(r"^#\$")
# The directive families each scheduler's submission reads (sbatch reads #PBS lines too).
SLURM_FAMILIES = ("SBATCH", "PBS")
SGE_FAMILIES = ("SGE",)
_JINJA_ONLY = re.compile(r"^\s*(\{%.*%\}|\{#.*#\})\s*$")


@dataclass(frozen=True)
class OptionUse:
    """One option as a scheduler will read it: ``name`` is canonical (``--array``, ``-t``)."""

    name: str
    text: str  # the words it came from, for the error message


def words(text: str) -> list[str]:
    """Split a directive's text into words as the schedulers do: quotes group, ``#`` ends it."""
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unclosed quote: read it word by word, so nothing hides behind it
        return text.split()


def slurm_options(text: str, known_long: Iterable[str]) -> list[OptionUse]:
    """The sbatch options in ``text`` (one ``#SBATCH`` line's worth), by canonical name.

    ``known_long`` are the long names the caller cares about; an abbreviation of one of them
    (``--arr`` for ``--array``; getopt takes any unambiguous prefix) is reported under its full
    name. Every word that starts with ``-`` is read as an option, even where sbatch would take it
    as the value of the option before (``--job-name -a``): a refusal there is a false alarm on a
    name nobody gives, never a miss.
    """
    long_names = tuple(known_long)
    found: list[OptionUse] = []
    for word in words(text):
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            full = _expand_abbreviation(name, long_names)
            found.append(OptionUse(full, text))
        elif word.startswith("-") and len(word) > 1:
            found.extend(OptionUse(f"-{letter}", text) for letter in _cluster(word[1:], _SBATCH_SHORT_WITH_ARGUMENT))
    return found


def pbs_options(text: str) -> list[OptionUse]:
    """The qsub options in ``text`` (one ``#PBS`` line's worth): single letters, clustered or not."""
    found: list[OptionUse] = []
    for word in words(text):
        if word.startswith("-") and len(word) > 1 and not word.startswith("--"):
            found.extend(OptionUse(f"-{letter}", text) for letter in _cluster(word[1:], _QSUB_SHORT_WITH_ARGUMENT))
    return found


def sge_options(text: str) -> list[OptionUse]:
    """The qsub options in ``text`` (one ``#$`` line's worth): Grid Engine options are whole words."""
    return [OptionUse(word, text) for word in words(text) if word.startswith("-") and len(word) > 1]


def _cluster(letters: str, with_argument: frozenset[str]) -> list[str]:
    """``Ha1-2`` -> ``['H', 'a']``: flags, then the first letter that takes the rest as its value."""
    seen: list[str] = []
    for letter in letters:
        seen.append(letter)
        if letter in with_argument or not letter.isalpha():
            break
    return seen


def _expand_abbreviation(name: str, long_names: Sequence[str]) -> str:
    if name in long_names:
        return name
    # '--a' is ambiguous for sbatch (it refuses it), so any prefix past '--' may stand for a name.
    matches = [full for full in long_names if len(name) > 2 and full.startswith(name)]
    return matches[0] if len(matches) == 1 else name


@dataclass(frozen=True)
class ScriptDirective:
    """A directive line of a script that a scheduler will read: its family and its options."""

    family: str  # "SBATCH", "PBS" or "SGE"
    line: str
    options: tuple[OptionUse, ...]
    separates_components: bool = False  # '#SBATCH hetjob'


def script_directives(script: str, *, templated: bool = False) -> list[ScriptDirective]:
    """Every directive line ``sbatch`` or ``qsub`` would read in ``script``.

    ``#SBATCH`` lines count in the header only (sbatch stops at the first command); ``#PBS``
    lines count anywhere (sbatch reads them all; Torque and PBS Pro read the header, a part of
    it). With ``templated`` (a Jinja template, read before rendering), lines made only of a Jinja
    statement or comment are passed over, since they render to nothing a scheduler sees.
    """
    found: list[ScriptDirective] = []
    in_header = True
    for number, line in enumerate(script.splitlines()):
        if templated and _JINJA_ONLY.match(line):
            continue
        stripped = line.strip()
        if in_header and number > 0 and stripped and not stripped.startswith("#"):
            in_header = False
        sbatch = _SBATCH_MAGIC.match(line)
        if sbatch and in_header:
            rest = line[sbatch.end() :]
            options = tuple(slurm_options(rest, SLURM_ARRAY[:1]))
            hetjob = any(word in _HETJOB_WORDS for word in words(rest))
            found.append(ScriptDirective("SBATCH", line, options, separates_components=hetjob))
        elif _PBS_MAGIC.match(line):
            found.append(ScriptDirective("PBS", line, tuple(pbs_options(line[len("#PBS") :]))))
        elif _SGE_MAGIC.match(line):
            found.append(ScriptDirective("SGE", line, tuple(sge_options(line[len("#$") :]))))
    return found


def multi_job_requests(script: str, *, templated: bool = False, families: Sequence[str] = SLURM_FAMILIES) -> list[str]:
    """The lines of ``script`` that would make it a job array or a heterogeneous job, as written,
    among the directive ``families`` the submitting scheduler reads."""
    array_options = {"SBATCH": set(SLURM_ARRAY), "PBS": set(PBS_ARRAY), "SGE": set(SGE_ARRAY)}
    offending: list[str] = []
    for directive in script_directives(script, templated=templated):
        if directive.family not in families:
            continue
        names = {use.name for use in directive.options}
        if directive.separates_components or names & array_options[directive.family]:
            offending.append(directive.line.strip())
    return offending


# --- the environment a submission runs in -------------------------------------------------------


@dataclass(frozen=True)
class EnvRule:
    """Environment names a job's ``env`` may not use: ``NAME`` exactly, or ``PREFIX_*``."""

    pattern: str
    reason: str

    def matches(self, name: str) -> bool:
        if self.pattern.endswith("*"):
            return name.startswith(self.pattern[:-1])
        return name == self.pattern


# Env values travel in the environment of the shell that runs sbatch, qsub or srun on the login node
# (or in the allocation), and reach the job from there: a name those programs read changes what is
# submitted, not only what the job sees.
_SETUP_HINT = "set it in setup= (for example 'export {name}=...') so only the job sees it"
SHELL_ENV_RULES = (
    EnvRule("AIRFLOW_HPC_*", "the provider's own variables (the job's key) would be overwritten"),
    EnvRule("PATH", "it decides which sbatch, qsub or srun the submission runs; " + _SETUP_HINT),
    EnvRule("HOME", "the submission finds the job's script, log and exit files under $HOME; " + _SETUP_HINT),
    EnvRule("IFS", "it changes how the submitting shell splits words"),
    EnvRule("ENV", "a shell the submission starts would run the file it names"),
    EnvRule("BASH_ENV", "a shell the submission starts would run the file it names"),
    EnvRule("SHELLOPTS", "bash takes its options from it, in the submission too"),
    EnvRule("BASHOPTS", "bash takes its options from it, in the submission too"),
    EnvRule("POSIXLY_CORRECT", "it changes how sbatch and qsub read their options"),
    EnvRule("LD_*", "it changes the libraries sbatch, qsub and srun load on the login node; " + _SETUP_HINT),
)
SLURM_ENV_RULES = (
    EnvRule(
        "SBATCH_*",
        "sbatch reads SBATCH_* variables as its own options (SBATCH_ARRAY_INX makes a job array, "
        "SBATCH_EXPORT changes how env values reach the job); give options in extra_options",
    ),
    EnvRule(
        "SLURM_*",
        "sbatch and srun read some SLURM_* variables as settings (SLURM_CONF picks another cluster "
        "configuration, SLURM_CLUSTERS another cluster) and Slurm sets the others inside the job",
    ),
)
PBS_ENV_RULES = (
    EnvRule(
        "PBS_*",
        "qsub reads PBS_DEFAULT and PBS_SERVER (which server) and PBS_DPREFIX (which lines are "
        "directives), and PBS sets the others inside the job",
    ),
    EnvRule("PERL5*", "the Slurm-backed PBS wrappers' qsub is a Perl program, which would run with it"),
    EnvRule("PERLLIB", "the Slurm-backed PBS wrappers' qsub is a Perl program, which would load from it"),
    # The Slurm-backed wrappers hand the job to sbatch in qsub's environment.
    *(
        EnvRule(rule.pattern, rule.reason + " (the Slurm-backed PBS wrappers' qsub runs sbatch)")
        for rule in SLURM_ENV_RULES
    ),
)
SGE_ENV_RULES = (
    EnvRule(
        "SGE_*",
        "qsub reads SGE_ROOT, SGE_CELL and SGE_QMASTER_PORT (which cluster it submits to), and Grid "
        "Engine sets the others inside the job",
    ),
)
TENANT_ENV_RULES = (
    EnvRule(
        "SLURM_*",
        "a tenant's srun reads SLURM_* variables as settings (SLURM_JOB_ID names the allocation, "
        "SLURM_MEM_PER_NODE the step's memory) and Slurm sets the others inside the allocation",
    ),
    EnvRule("SRUN_*", "a tenant's srun reads SRUN_* variables as its own options; give cpus= and memory="),
    EnvRule("SBATCH_*", "sbatch reads SBATCH_* variables as its own options"),
)


def refused_env_name(name: str, rules: Iterable[EnvRule]) -> EnvRule | None:
    return next((rule for rule in rules if rule.matches(name)), None)


def check_env_names(names: Iterable[str], rules: Iterable[EnvRule]) -> None:
    """Refuse env names the submission itself would read, saying why (see the rule sets above)."""
    rules = tuple(rules)
    for name in names:
        rule = refused_env_name(name, rules)
        if rule is not None:
            raise JobSpecError(
                f"env name {name!r} is refused: env values travel in the environment of the "
                f"shell that submits the job, and {rule.reason}"
            )


def checked_extra_directives(directives: Iterable[str], reserved: Sequence[str]) -> list[str]:
    """A PBS or Grid Engine task's ``extra_directives``, each one line and none setting what the
    provider sets itself (``reserved``: the options it writes, such as the job's name and output)."""
    checked = []
    for directive in directives:
        if "\n" in directive or "\r" in directive or "\0" in directive:
            raise JobSpecError(f"extra directive {directive!r} must be a single line")
        if directive.split(" ", 1)[0] in reserved:
            raise JobSpecError(f"extra directive {directive!r}: {', '.join(reserved)} are set by the provider")
        checked.append(directive)
    return checked


def default_shebang(login_shell: bool) -> str:
    """The shebang of a batch script the provider writes: bash, as a login shell when asked."""
    return "#!/bin/bash -l\n" if login_shell else "#!/bin/bash\n"


# A shebang of the POSIX shell family (sh, bash, dash, ksh, zsh; directly or through env): the only
# interpreters the provider's own lines in a user's script are written for.
_POSIX_SHELL_SHEBANG = re.compile(r"#!\s*\S*/(?:env\s+)?(ba|da|k|z)?sh\b")


def is_posix_shell(shebang: str) -> bool:
    """Whether a script's shebang line runs a POSIX-family shell (not csh, Python, Perl...)."""
    return _POSIX_SHELL_SHEBANG.match(shebang) is not None


def split_user_script(script: str, login_shell: bool) -> tuple[str, str, str]:
    """A whole batch script by the user as (shebang, directive header, the rest), each ending in a
    newline when not empty, so the provider's lines go after the shebang and after the header,
    never glued onto a last line without one. Without a shebang, :func:`default_shebang`."""
    lines = script.splitlines(keepends=True)
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else default_shebang(login_shell)
    header_end = 0
    while header_end < len(lines) and (lines[header_end].startswith("#") or not lines[header_end].strip()):
        header_end += 1
    header, rest = "".join(lines[:header_end]), "".join(lines[header_end:])
    if not shebang.endswith("\n"):
        shebang += "\n"
    if header and not header.endswith("\n"):
        header += "\n"
    return shebang, header, rest
