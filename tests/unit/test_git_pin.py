"""``git=``: bad arguments fail when the DAG is parsed; the checkout script quotes what it is given.

The script is run here with the local ``sh`` and ``git`` against a repository on disk (its path
full of shell syntax), which is what the login node does with it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.git_pin import (
    KEY_UPLOAD_COMMAND,
    Checkout,
    CheckoutPlace,
    DeployKeyFiles,
    GitSource,
    checkout_script,
    parse_checkout_output,
)
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

GOOD = {"repo": "git@github.com:org/code.git", "ref": "main"}


@pytest.mark.parametrize(
    ("git", "words"),
    [
        ("git@github.com:org/code.git", "takes a dict"),
        ({"repo": "git@github.com:org/code.git"}, "needs 'ref'"),
        ({"ref": "main"}, "needs 'repo'"),
        ({**GOOD, "branch": "main"}, "does not know ['branch']"),
        ({**GOOD, "repo": "ext::sh -c touch% /tmp/pwned"}, "not a repository address"),
        ({**GOOD, "repo": "--upload-pack=touch /tmp/x"}, "may not start with '-'"),
        ({**GOOD, "repo": "relative/path"}, "not a repository address"),
        ({**GOOD, "repo": ""}, "non-empty string"),
        ({**GOOD, "ref": "main branch"}, "not a git ref name"),
        ({**GOOD, "ref": "-main"}, "not a git ref name"),
        ({**GOOD, "ref": "a..b"}, "not a git ref name"),
        ({**GOOD, "ref": "feature.lock"}, "not a git ref name"),
        ({**GOOD, "ref": "main\nrm -rf ~"}, "one line"),
        ({**GOOD, "ref": "3f2a9c1"}, "abbreviated commit SHA"),
        ({**GOOD, "ref": "{{ params.ref }}"}, "not templated"),
        ({**GOOD, "path": "/etc"}, "relative to the repository's root"),
        ({**GOOD, "path": "sub/../../x"}, "without '..'"),
        ({**GOOD, "key_conn_id": ""}, "non-empty string"),
        ({**GOOD, "repo": 42}, "non-empty string"),
    ],
)
def test_a_bad_git_argument_fails_when_the_dag_is_parsed_with_a_clear_error(git: Any, words: str) -> None:
    for make in (
        lambda: SlurmSubmitOperator(task_id="t", command="true", git=git),
        lambda: PbsOperator(task_id="t", command="true", git=git),
        lambda: SgeOperator(task_id="t", command="true", git=git),
    ):
        with pytest.raises(JobSpecError, match="git") as refused:
            make()
        assert words in str(refused.value)


def test_good_git_arguments_are_kept_as_given() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    cases = {
        "main": GOOD,
        "tag": {"repo": "https://example.org/code.git", "ref": "v1.2.3", "path": "./jobs/", "key_conn_id": "deploy"},
        "sha": {"repo": "/srv/git/code.git", "ref": sha},
        "full": {"repo": "ssh://git@host:2222/srv/code.git", "ref": "refs/heads/release/2.0"},
    }
    parsed = {
        name: SlurmSubmitOperator(task_id=name, command="true", git=git).git_source for name, git in cases.items()
    }
    assert parsed["main"] == GitSource(repo="git@github.com:org/code.git", ref="main")
    assert parsed["tag"] == GitSource("https://example.org/code.git", "v1.2.3", "jobs", "deploy")
    assert parsed["sha"] == GitSource("/srv/git/code.git", sha)
    assert parsed["full"] is not None and parsed["full"].ref == "refs/heads/release/2.0"
    assert SlurmSubmitOperator(task_id="plain", command="true").git_source is None


def test_a_pin_is_shared_by_every_try_and_map_index_of_a_task_in_one_run_and_by_nothing_else() -> None:
    source = GitSource("git@github.com:org/code.git", "main")
    pin = source.pin_digest("dag", "run1", "task")
    assert pin == GitSource("git@github.com:org/code.git", "main", path="other").pin_digest("dag", "run1", "task")
    others = {
        source.pin_digest("dag", "run2", "task"),
        source.pin_digest("dag", "run1", "task2"),
        source.pin_digest("dag2", "run1", "task"),
        GitSource("git@github.com:org/code.git", "dev").pin_digest("dag", "run1", "task"),
        GitSource("git@github.com:org/fork.git", "main").pin_digest("dag", "run1", "task"),
    }
    assert pin not in others and len(others) == 5


@pytest.mark.parametrize(
    ("path", "working_dir", "expected"),
    [
        (None, None, "/c/sha"),
        ("tools", None, "/c/sha/tools"),
        ("tools", "run/a", "/c/sha/tools/run/a"),
        (None, "run", "/c/sha/run"),
        ("tools", "/scratch/me", "/scratch/me"),
    ],
)
def test_a_relative_working_dir_resolves_inside_the_checkout_and_an_absolute_one_is_kept(
    path: str | None, working_dir: str | None, expected: str
) -> None:
    checkout = Checkout(sha="0" * 40, directory="/c/sha", made=False, pinned_earlier=False)
    assert checkout.working_dir(GitSource("/r.git", "main", path), working_dir) == expected


def test_the_deploy_key_never_appears_in_the_checkout_script_or_on_a_command_line() -> None:
    files = DeployKeyFiles(directory="/tmp/airflow-hpc-git.Ab12Cd34", known_hosts="[h]:2222 ssh-ed25519 AAAAhost\n")
    source = GitSource("ssh://git@h:2222/code.git", "main", key_conn_id="deploy")
    script = checkout_script("TOKEN", source, CheckoutPlace("logs", "pin"), files)
    assert "PRIVATE KEY" not in script
    # The key's file is named, host keys are checked against the connection's only.
    assert "StrictHostKeyChecking=yes" in script and "/tmp/airflow-hpc-git.Ab12Cd34/known_hosts" in script
    assert "trap 'rm -rf -- /tmp/airflow-hpc-git.Ab12Cd34' EXIT" in script
    # The upload's command line is fixed text (a constant): the key travels on its stdin.
    assert KEY_UPLOAD_COMMAND.startswith("sh -c 'umask 077;") and 'cat > "$d/key"' in KEY_UPLOAD_COMMAND
    done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@x"
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_checkout_script_runs_with_shell_syntax_in_every_value_and_executes_none_of_it(tmp_path: Path) -> None:
    nasty = tmp_path / "a'b$(touch${IFS}pwned)`touch${IFS}pwned2`;c"
    nasty.mkdir()
    repo = nasty / "code.git"
    work = tmp_path / "work"
    _git("init", "-q", "-b", "main", str(work))
    sub = "sub$(touch${IFS}pwned3)"
    (work / sub).mkdir()
    (work / sub / "x").write_text("x\n")
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(repo))
    sha = _git("rev-parse", "HEAD", cwd=work)

    source = GitSource.parse({"repo": str(repo), "ref": "main", "path": sub}, "t")
    assert source is not None
    place = CheckoutPlace("logs$(touch${IFS}pwned4)", source.pin_digest("d", "r", "t"))
    home = tmp_path / "home"
    home.mkdir()
    results = []
    for _ in range(2):
        done = subprocess.run(
            ["sh", "-s"],
            input="{\n" + checkout_script("TOK", source, place) + "}\n",
            env={**os.environ, "HOME": str(home)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        results.append(parse_checkout_output(done.stdout, "TOK"))
    first, second = results
    assert first is not None and second is not None
    assert (first.sha, first.made, first.pinned_earlier) == (sha, True, False)
    assert (second.sha, second.made, second.pinned_earlier) == (sha, False, True)
    assert first.directory == str(home / place.checkouts(source) / sha)
    assert (Path(first.directory) / sub / "x").read_text() == "x\n"
    assert not list(tmp_path.rglob("pwned*")), "a value was executed by the shell"


@pytest.mark.parametrize(
    "task",
    [
        "SlurmSubmitOperator(task_id='t', command='true', git=GIT)",
        "SlurmSubmitOperator.partial(task_id='t', command='true', git=GIT).expand(env=[{'A': '1'}])",
        "SlurmTenantOperator(task_id='t', reservation='pool', command='true', git=GIT)",
        "SlurmTenantOperator.partial(task_id='t', reservation='pool', git=GIT).expand(command=['true'])",
    ],
)
def test_a_dag_with_a_bad_git_argument_fails_to_import_with_the_reason_mapped_or_not(tmp_path: Path, task: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag_file = tmp_path / "bad_git.py"
    dag_file.write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator\n"
        "from airflow_hpc_provider.operators.slurm_tenant import SlurmTenantOperator\n"
        "GIT = {'repo': 'ext::sh -c id', 'ref': 'main'}\n"
        "with DAG('bad_git', schedule=None, start_date=datetime(2026, 1, 1)):\n"
        f"    {task}\n"
    )
    bag = DagBag(dag_folder=str(dag_file))
    assert "bad_git" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "t: git['repo']='ext::sh -c id' is not a repository address" in error
