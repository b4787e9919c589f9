"""A real Airflow 3 deployment for tests: api-server, scheduler, dag-processor and triggerer(s).

Every component is a subprocess in its own session (so its children go with it), bound to
127.0.0.1 on a free port, and stopped through its PID (its process group) by :meth:`AirflowStack.stop`.
The metadata database is SQLite in a temporary ``AIRFLOW_HOME``; the executor is LocalExecutor.
The stack is driven like a user would drive it: through the public REST API (``/api/v2``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AIRFLOW = [sys.executable, "-m", "airflow"]
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StackError(AssertionError):
    """The deployment did not do what the test needed (with the component logs' tail)."""


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the component's process group (its own session: the PID is the group id)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        # Whatever is left of the group (the triggerer's runner child, log servers, task processes).
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class AirflowStack:
    """One Airflow deployment in ``home``; call :meth:`start`, then drive it with the REST helpers."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        *,
        extra_env: Mapping[str, str] = (),  # type: ignore[assignment]
        parallelism: int = 2,
    ) -> None:
        self.home = home
        self.dags_folder = dags_folder
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.components: list[Component] = []
        self.triggerers: list[Component] = []
        self.env = {
            **os.environ,
            **dict(extra_env),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # Five components write to one SQLite file; a writer waits up to 30 s for the lock instead
            # of sqlite3's 5 s (on a loaded machine 5 s ran out: HTTP 500 'database is locked').
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=30",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the connection form's Test button
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # A task's supervisor sometimes notices its process's exit only when its select() times out,
            # [workers] min_heartbeat_interval (5 s): the worker slot then idles for those seconds.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            # New DAG files are found within 5 s; known ones are not parsed again and again (2 vCPUs).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            # A dead triggerer's triggers move to a live one after this long without its heartbeat.
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("AIRFLOW_CONFIG", None)

    # -- processes ---------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Component:
        log_path = self.home / f"{name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                [*AIRFLOW, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,
            )
        component = Component(name, process, log_path)
        self.components.append(component)
        return component

    def start(self, *, triggerers: int = 1, timeout_s: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        migrate = subprocess.run(
            [*AIRFLOW, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=300, cwd=self.home
        )
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate exited {migrate.returncode}:\n{migrate.stdout}\n{migrate.stderr}")
        self._spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "-w", "1"])
        # Log servers bind every interface (not configurable): skip them. Every component shares
        # this host's log folder, so the api-server reads task and trigger logs from the files.
        self._spawn("scheduler", ["scheduler", "--skip-serve-logs"])
        self._spawn("dag-processor", ["dag-processor"])
        for _ in range(triggerers):
            self.start_triggerer()
        self.wait(lambda: self._api_ready(), timeout_s, "the api-server to answer")

    def start_triggerer(self) -> Component:
        index = len(self.triggerers)
        component = self._spawn(f"triggerer-{index}", ["triggerer", "--skip-serve-logs"])
        self.triggerers.append(component)
        return component

    def kill(self, component: Component, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill a component's whole process group at once, as a crashed host would."""
        component.signal_group(sig)
        try:
            component.process.wait(timeout=30)
        except subprocess.TimeoutExpired as error:
            raise StackError(f"{component.name} (pid {component.pid}) still runs after {sig.name}") from error

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- {c.name} (pid {c.pid}, {'alive' if c.alive() else f'exited {c.process.returncode}'}) ---\n{c.tail()}"
            for c in self.components
        )

    def wait(self, condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            for component in self.components:
                if not component.alive() and component not in self.triggerers:
                    raise StackError(f"{component.name} exited while waiting for {what}\n{self.diagnostics()}")
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{self.diagnostics()}")
            time.sleep(interval_s)

    def _api_ready(self) -> bool:
        try:
            self.get("/api/v2/monitor/health")
            return True
        except (OSError, StackError):
            return False

    # -- REST --------------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, *, accept: str = "application/json", timeout_s: float = 60
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Accept": accept, **({"Content-Type": "application/json"} if data is not None else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise StackError(f"{method} {path} -> HTTP {error.code}: {error.read().decode(errors='replace')}") from None
        if accept == "application/json":
            return json.loads(raw) if raw else None
        return raw.decode(errors="replace")

    def get(self, path: str, **query: Any) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        return self.request("GET", path)

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> None:
        def parsed() -> bool:
            try:
                self.get(f"/api/v2/dags/{dag_id}")
                return True
            except StackError:
                return False

        self.wait(parsed, timeout_s, f"DAG {dag_id} to be parsed")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        self.wait_for_dag(dag_id)
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        run_id: str = run["dag_run_id"]
        return run_id

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
        return run

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        tis: list[dict[str, Any]] = self.get(path, limit=1000)["task_instances"]
        return tis

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        mapped = "" if map_index < 0 else f"/{map_index}"
        ti: dict[str, Any] = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}{mapped}"
        )
        return ti

    def wait_for_states(
        self, dag_id: str, run_id: str, states: set[str], timeout_s: float, *, count: int | None = None
    ) -> list[dict[str, Any]]:
        """Wait until every task instance (or ``count`` of them) is in one of ``states``."""

        def reached() -> list[dict[str, Any]] | None:
            tis = self.task_instances(dag_id, run_id)
            matching = [ti for ti in tis if ti["state"] in states]
            needed = len(tis) if count is None else count
            return tis if tis and len(matching) >= needed else None

        result: list[dict[str, Any]] = self.wait(reached, timeout_s, f"{dag_id}/{run_id} tasks in {sorted(states)}")
        return result

    def wait_for_run_end(self, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
        result: dict[str, Any] = self.wait(
            lambda: (run := self.dag_run(dag_id, run_id))["state"] in ("success", "failed") and run,
            timeout_s,
            f"dag run {dag_id}/{run_id} to end",
        )
        return result

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1) -> Any:
        mapped = "" if map_index < 0 else f"/{map_index}"
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}{mapped}"
        try:
            return self.request("PATCH", path, {"new_state": state})
        except StackError as error:
            # The stack's SQLite write lock can be held past its 30 s busy timeout by another
            # component (seen on CI: the audit-log INSERT of this PATCH failed, HTTP 500, while the
            # triggerer, the scheduler and a worker's heartbeat all waited the same 30 s). Setting a
            # state is idempotent: asked once more. Production databases lock rows, not the file.
            if "HTTP 500" not in str(error):
                raise
            return self.request("PATCH", path, {"new_state": state})

    def clear_task(self, dag_id: str, run_id: str, task_id: str) -> Any:
        return self.request(
            "POST",
            f"/api/v2/dags/{dag_id}/clearTaskInstances",
            {"dry_run": False, "dag_run_id": run_id, "task_ids": [task_id], "only_failed": False},
        )

    def set_paused(self, dag_id: str, paused: bool) -> Any:
        return self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> list[str]:
        """The task log's messages, as the UI reads them (all sources merged by the api-server)."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/logs/{try_number}?full_content=true" + ("" if map_index < 0 else f"&map_index={map_index}")
        )
        body = self.request("GET", path)
        lines: list[str] = []
        for entry in body["content"]:
            if isinstance(entry, str):
                lines.extend(entry.splitlines())
            else:
                lines.append(str(entry.get("event", "")))
        return lines
