"""Git-pinned code, the pure part: the ``git=`` argument, where a task's pin lives, and the script
that resolves the pin and makes the checkout on a cluster's login node.

``git={"repo": ..., "ref": "main", "path": "sub/dir", "key_conn_id": ...}`` asks for a task's
command to run in a checkout of ``repo`` at the commit ``ref`` names when the task STARTS. The
commit is resolved once per task per DAG run and kept on the cluster, so every try and every map
index of that task in that run runs the same commit, whatever is pushed meanwhile:

* The pin is a file ``<log_dir>/git-pins/<digest>.sha`` whose digest names (dag_id, run_id,
  task_id, repo, ref): not the map index (all indexes share it), not the try number (a retry reads
  it), not XCom (a retry's XCom of an earlier try may be cleared). The first task to start writes
  the SHA to a temporary file and links it into place (``ln`` fails when the pin exists, so the
  first wins and nobody ever reads half a pin); everyone else reads it.
* The checkout is ``<log_dir>/git-checkouts/<repo digest>/<sha>``, shared by every task of that
  commit. It is made under a lock (``flock`` on ``<sha>.lock``) in a temporary directory beside it,
  checked (HEAD is the SHA) and renamed into place: a checkout that exists is whole, and it is made
  once however many tasks start together.

Everything a user gives is checked here when the DAG is parsed; everything reaching the shell is
quoted. The deploy key never appears in this script: it is uploaded separately (see
:mod:`airflow_hpc_provider.hooks.git_checkout`) and only its temporary path is named here.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.dialects.remote_shell import heredoc, home_relative, quote
from airflow_hpc_provider.errors import JobSpecError

GIT_KEYS = ("repo", "ref", "path", "key_conn_id")
PIN_DIR = "git-pins"
CHECKOUT_DIR = "git-checkouts"
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
# Remote helpers such as ext:: and fd:: make git run commands or read descriptors: never a repo here.
_REPO_FORMS = (
    re.compile(r"^(ssh|git\+ssh|https?|git|file)://[^\s]+$"),
    re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:[^\s]+$"),  # scp-like: git@host:org/repo.git
    re.compile(r"^/[^\s]*$"),  # a path on the cluster
)
# What git's check-ref-format refuses, in the words of its rules.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def _single_line(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise JobSpecError(f"git[{name!r}]={value!r}: give a non-empty string")
    if "{{" in value or "{%" in value:
        raise JobSpecError(
            f"git[{name!r}]={value!r}: git= is not templated (its commit is pinned when the task starts); "
            "give a literal value"
        )
    if any(char in value for char in "\n\r\x00"):
        raise JobSpecError(f"git[{name!r}]={value!r} must be one line")
    return value


def check_repo(value: Any) -> str:
    repo = _single_line(value, "repo")
    if repo.startswith("-"):
        raise JobSpecError(f"git['repo']={repo!r} may not start with '-' (git would read it as an option)")
    if not any(form.match(repo) for form in _REPO_FORMS):
        raise JobSpecError(
            f"git['repo']={repo!r} is not a repository address: give ssh://host/path, git@host:path, "
            "https://host/path, file:///path or an absolute path on the cluster (git's remote helpers "
            "such as ext:: are refused: they run commands)"
        )
    return repo


def check_ref(value: Any) -> str:
    """A branch, a tag, ``HEAD``, a full ref name (``refs/heads/x``) or a full 40-hex commit SHA."""
    ref = _single_line(value, "ref")
    problems = []
    if _REF_FORBIDDEN.search(ref):
        problems.append("it holds a space, a control character or one of ~ ^ : ? * [ \\")
    if ref.startswith(("-", "/", ".")) or ref.endswith(("/", ".", ".lock")):
        problems.append("it starts with '-', '/' or '.', or ends with '/', '.' or '.lock'")
    if ".." in ref or "//" in ref or "@{" in ref or ref == "@" or "/." in ref:
        problems.append("it holds '..', '//', '/.' or '@{'")
    if problems:
        raise JobSpecError(f"git['ref']={ref!r} is not a git ref name: {'; '.join(problems)}")
    if re.fullmatch(r"[0-9a-fA-F]{7,39}", ref) and not FULL_SHA.match(ref):
        # Branches named like hex exist, but an abbreviated SHA cannot be asked of a remote.
        raise JobSpecError(
            f"git['ref']={ref!r} looks like an abbreviated commit SHA: a remote resolves branch and tag "
            "names only, so give all 40 hex digits (or a branch or tag)"
        )
    return ref


def check_path(value: Any) -> str | None:
    """A directory inside the repository, relative, without ``..``: where the command starts."""
    if value is None:
        return None
    path = _single_line(value, "path")
    if path.startswith("/") or ".." in path.split("/"):
        raise JobSpecError(f"git['path']={path!r} must be relative to the repository's root, without '..'")
    normal = posixpath.normpath(path)
    return None if normal == "." else normal


@dataclass(frozen=True)
class GitSource:
    """A task's ``git=`` argument, checked."""

    repo: str
    ref: str
    path: str | None = None
    key_conn_id: str | None = None

    @classmethod
    def parse(cls, value: Any, task_id: str) -> GitSource | None:
        """``None`` stays None; a dict is checked whole, with the reason of each refusal."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise JobSpecError(f"{task_id}: git= takes a dict such as {{'repo': ..., 'ref': 'main'}}, not {value!r}")
        unknown = sorted(str(name) for name in value if name not in GIT_KEYS)
        if unknown:
            raise JobSpecError(f"{task_id}: git= does not know {unknown}; it takes {list(GIT_KEYS)}")
        for required in ("repo", "ref"):
            if value.get(required) is None:
                raise JobSpecError(
                    f"{task_id}: git= needs {required!r}"
                    + (" (a branch, tag or full commit SHA: there is no default)" if required == "ref" else "")
                )
        key = value.get("key_conn_id")
        try:
            return cls(
                repo=check_repo(value["repo"]),
                ref=check_ref(value["ref"]),
                path=check_path(value.get("path")),
                key_conn_id=None if key is None else _single_line(key, "key_conn_id").strip(),
            )
        except JobSpecError as error:
            raise JobSpecError(f"{task_id}: {error}") from None

    @property
    def repo_digest(self) -> str:
        return hashlib.sha256(self.repo.encode()).hexdigest()[:16]

    def pin_digest(self, dag_id: str, run_id: str, task_id: str) -> str:
        """Names the pin every try and map index of one task in one DAG run shares (see module doc)."""
        identity = "\x1f".join(("git-pin", dag_id, run_id, task_id, self.repo, self.ref))
        return hashlib.sha256(identity.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CheckoutPlace:
    """Where a pin and its checkouts live on the cluster (relative paths are under the user's home)."""

    log_dir: str
    pin_digest: str

    @property
    def pin_file(self) -> str:
        return f"{self.log_dir.rstrip('/')}/{PIN_DIR}/{self.pin_digest}.sha"

    def checkouts(self, source: GitSource) -> str:
        return f"{self.log_dir.rstrip('/')}/{CHECKOUT_DIR}/{source.repo_digest}"


@dataclass(frozen=True)
class DeployKeyFiles:
    """The temporary directory on the cluster holding the key (``key``) and the git host's keys."""

    directory: str
    known_hosts: str

    def ssh_command(self) -> str:
        """``GIT_SSH_COMMAND``: this key only, these host keys only, never a prompt."""
        words = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            f"{self.directory}/key",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.directory}/known_hosts",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ]
        return " ".join(quote(word) for word in words)


# Results come back as "<token> name value" lines; git's own chatter goes to stderr.
CHECKOUT_SCRIPT = r"""
set -u
_say() { printf '%s %s %s\n' "$_t" "$1" "$2"; }
_fail() { printf '%s\n' "$1" >&2; exit "${2:-1}"; }
export GIT_TERMINAL_PROMPT=0 GIT_ASKPASS=/bin/false SSH_ASKPASS=/bin/false
mkdir -p -- "$(dirname -- "$_pin")" "$_root" || _fail "cannot make the git directories under the log_dir"
if [ -s "$_pin" ]; then
  _sha=$(cat -- "$_pin")
  _say from pinned
else
  if printf '%s' "$_ref" | grep -Eq '^[0-9a-f]{40}$'; then
    _sha=$_ref
  else
    _ls=$(git ls-remote "$_repo" "$_ref" "refs/heads/$_ref" "refs/tags/$_ref" "refs/tags/$_ref^{}") \
      || _fail "git ls-remote of the repository failed (see above)" 3
    _sha=$(printf '%s\n' "$_ls" | awk -v r="$_ref" '
      $2 == "refs/heads/" r { h = $1 } $2 == "refs/tags/" r "^{}" { p = $1 } $2 == "refs/tags/" r { t = $1 }
      $2 == r { e = $1 }
      END { if (h != "") print h; else if (p != "") print p; else if (t != "") print t; else if (e != "") print e }')
    [ -n "$_sha" ] || _fail "the repository has no branch or tag named $_ref" 4
  fi
  _tmp=$(mktemp -- "$_pin.XXXXXXXX") || _fail "cannot write the pin file"
  printf '%s\n' "$_sha" > "$_tmp" && ln -- "$_tmp" "$_pin" 2>/dev/null
  rm -f -- "$_tmp"
  # Whoever linked first wins: read the pin back, ours or theirs.
  _sha=$(cat -- "$_pin") || _fail "cannot read the pin file"
  _say from resolved
fi
printf '%s' "$_sha" | grep -Eq '^[0-9a-f]{40}$' || _fail "the pin file holds no commit SHA: $_pin" 5
_dir=$_root/$_sha
_made=0
if [ ! -d "$_dir" ]; then
  exec 8>>"$_root/$_sha.lock"
  flock -w 900 8 || _fail "could not take the checkout lock $_root/$_sha.lock within 900 s"
  if [ ! -d "$_dir" ]; then
    rm -rf -- "$_root/.$_sha".* 2>/dev/null  # a try that died half-way left it; we hold the lock
    _new=$(mktemp -d -- "$_root/.$_sha.XXXXXXXX") || _fail "cannot make a temporary checkout directory"
    {
      git init -q "$_new" &&
      { git -C "$_new" fetch -q --depth 1 "$_repo" "$_sha" 2>/dev/null ||
        git -C "$_new" fetch -q "$_repo" '+refs/heads/*:refs/remotes/pinned/*' '+refs/tags/*:refs/tags/*'; } &&
      git -C "$_new" -c advice.detachedHead=false checkout -q --detach "$_sha" &&
      [ "$(git -C "$_new" rev-parse HEAD)" = "$_sha" ]
    } >&2 || { rm -rf -- "$_new"; _fail "cannot check out commit $_sha of the repository (see above)" 6; }
    mv -- "$_new" "$_dir" || { rm -rf -- "$_new"; _fail "cannot move the checkout into place"; }
    _made=1
  fi
  exec 8>&-
fi
_abs=$(cd -- "$_dir" && pwd -P) || _fail "cannot enter the checkout $_dir"
if [ -n "$_sub" ] && [ ! -d "$_abs/$_sub" ]; then
  _fail "path $_sub is not a directory of the repository at commit $_sha" 7
fi
_say sha "$_sha"
_say made "$_made"
_say dir "$_abs"
"""


def checkout_script(
    token: str, source: GitSource, place: CheckoutPlace, key_files: DeployKeyFiles | None = None
) -> str:
    """The login-node script: resolve (or read) the pin, make (or reuse) the checkout, say where.

    With ``key_files``, git reaches the repository with the deploy key and the connection's host
    keys only; the script writes the host keys and removes the key's directory whatever happens.
    """
    lines = [
        f"_t={quote(token)}",
        f"_pin={home_relative(place.pin_file)}",
        f"_root={home_relative(place.checkouts(source))}",
        f"_repo={quote(source.repo)}",
        f"_ref={quote(source.ref)}",
        f"_sub={quote(source.path or '')}",
    ]
    key_part = ""
    if key_files is not None:
        directory = quote(key_files.directory)
        key_part = (
            f"trap 'rm -rf -- {directory}' EXIT\n"
            + "trap 'exit 129' HUP\ntrap 'exit 130' INT\ntrap 'exit 143' TERM\n"
            + heredoc(key_files.known_hosts, feed=f"umask 077; cat > {quote(key_files.directory + '/known_hosts')}")
            + f"export GIT_SSH_COMMAND={quote(key_files.ssh_command())}\n"
        )
    return "\n".join(lines) + "\n" + key_part + CHECKOUT_SCRIPT


@dataclass(frozen=True)
class Checkout:
    """What the login node said: the commit, where its checkout is, and how the pin was had."""

    sha: str
    directory: str
    made: bool
    pinned_earlier: bool

    def working_dir(self, source: GitSource, working_dir: str | None) -> str:
        """Where the command starts: a relative ``working_dir`` (or none) resolves inside the
        checkout's ``path``; an absolute one is kept as given."""
        base = posixpath.join(self.directory, source.path) if source.path else self.directory
        if not working_dir:
            return base
        return posixpath.normpath(posixpath.join(base, working_dir))


def parse_checkout_output(output: str, token: str) -> Checkout | None:
    """The script's result lines; None when any is missing (the script did not finish)."""
    said: dict[str, str] = {}
    for line in output.splitlines():
        head, _, rest = line.partition(" ")
        if head == token:
            name, _, value = rest.partition(" ")
            said[name] = value
    if not FULL_SHA.match(said.get("sha", "")) or not said.get("dir") or said.get("made") not in ("0", "1"):
        return None
    return Checkout(
        sha=said["sha"], directory=said["dir"], made=said["made"] == "1", pinned_earlier=said.get("from") == "pinned"
    )


# Runs under the user's login shell (any shell): fixed text, no value of ours. It makes a private
# temporary directory (mode 0700), writes the key from stdin into it with mode 0600, says where.
KEY_UPLOAD_COMMAND = (
    'sh -c \'umask 077; d=$(mktemp -d "${TMPDIR:-/tmp}/airflow-hpc-git.XXXXXXXX") || exit 1; '
    'cat > "$d/key" || { rm -rf "$d"; exit 1; }; printf "%s\\n" "$d"\''
)


def key_removal_script(directory: str) -> str:
    return f"rm -rf -- {quote(directory)}\n"
