"""Benchmark: how soon does streaming resume after the login node comes back from an outage?

Prints figures, asserts nothing. For each code version in ``--code`` (``new``: this checkout;
``old``: the provider as of ``--old-ref``, side by side) and each kind of outage in ``--kinds``:

* ``reset``: every connection reset and the SSH port closed (a login node that went down);
* ``silent``: the link stops answering without an error (a dead route, a firewall dropping packets);

a child process watches one Slurm job (a tick line every 0.5 s) through ``SlurmJobTrigger`` over
a TCP proxy on 127.0.0.1 in front of the test sshd (``tests/integration/tcp_proxy.py``). Once
ticks stream, the proxy fails as told for ``--outage-s`` seconds, then works again. The child
reports when the watch noticed (its first warning), and how many seconds after the node came back
the next tick reached the log. It then cancels the job.

    .venv/bin/python bench/outage_recovery.py [--outage-s 60] [--kinds reset,silent] [--code new,old]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.log_delivery import DEFAULT_ENV_FILE, load_env, old_code  # noqa: E402


def child(params: dict[str, Any]) -> dict[str, Any]:
    if params["code_path"]:
        sys.path.insert(0, params["code_path"])
    return asyncio.run(_child(params))


async def _child(params: dict[str, Any]) -> dict[str, Any]:
    from airflow_hpc_provider.dialects import slurm
    from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook, submit_job
    from airflow_hpc_provider.hooks.ssh import SshTransport
    from airflow_hpc_provider.jobs import JobKey, JobSpec
    from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
    from tests.integration import cluster
    from tests.integration.tcp_proxy import TcpProxy

    proxy = TcpProxy(cluster.SSH_PORT).start()
    conn = json.loads(os.environ["AIRFLOW_CONN_SLURM_LOCAL"])
    conn["port"] = proxy.port
    del conn["extra"]["known_hosts"]
    host_key = (cluster.CLUSTER_DIR / "ssh/ssh_host_ed25519_key.pub").read_text().split()
    conn["extra"]["host_key"] = " ".join(host_key[:2])
    os.environ["AIRFLOW_CONN_SLURM_PROXIED"] = json.dumps(conn)

    ticks = int((params["outage_s"] + 120) / 0.5)
    key = JobKey.for_task_instance("bench_outage", "job", uuid.uuid4().hex, -1, 1)
    spec = JobSpec(command=f'for i in $(seq 1 {ticks}); do echo "tick $i"; sleep 0.5; done', job_name="bench-outage")
    transport = SshTransport(SlurmHook("slurm_local").get_target())
    try:
        submitted = await submit_job(
            transport, spec, slurm.render_script(spec), key=key, log_dir=DEFAULT_LOG_DIR, env={}
        )
    finally:
        await transport.close()
    job_id = str(submitted.job_id)
    trigger = SlurmJobTrigger(
        conn_id="slurm_proxied",
        job_id=job_id,
        log_path=slurm.log_path(DEFAULT_LOG_DIR, key, job_id),
        cursor_path=slurm.cursor_path(DEFAULT_LOG_DIR, key, job_id),
        poll_interval=2.0,
    )
    arrived: list[tuple[float, str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            arrived.append((time.monotonic(), record.getMessage()))

    logger = logging.getLogger(f"bench.outage.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.addHandler(Recorder())
    logger.propagate = False
    trigger._log = logger

    async def watch() -> None:
        async for _event in trigger.run():
            return

    watching = asyncio.ensure_future(watch())
    result: dict[str, Any] = {"code": params["code"], "kind": params["kind"], "job_id": job_id}
    try:
        deadline = time.monotonic() + 300
        while not any(line == "tick 5" for _, line in arrived):
            if time.monotonic() > deadline:
                raise SystemExit("the job never streamed")
            await asyncio.sleep(0.1)
        began = time.monotonic()
        if params["kind"] == "reset":
            proxy.refuse()
        else:
            proxy.blackhole()
        await asyncio.sleep(params["outage_s"])
        back = time.monotonic()
        proxy.restore()
        warned = next((t for t, line in arrived if t > began and not line.startswith(("tick ", "Slurm job"))), None)
        result["noticed_after_s"] = None if warned is None else warned - began
        ticks_before = sum(1 for t, line in arrived if t <= back and line.startswith("tick "))
        while True:
            fresh = [t for t, line in arrived if t > back and line.startswith("tick ")]
            if fresh:
                result["resumed_after_s"] = fresh[0] - back
                break
            if time.monotonic() - back > 300:
                result["resumed_after_s"] = None
                break
            await asyncio.sleep(0.05)
        result["ticks_before_return"] = ticks_before
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        proxy.stop()
        cluster.ssh(f"scancel {job_id}", check=False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--kinds", default="reset,silent")
    parser.add_argument("--code", default="new,old")
    parser.add_argument("--old-ref", default="036ece9")
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    load_env(args.env_file)
    old_path = old_code(args.old_ref) if "old" in args.code.split(",") else ""
    results = []
    for kind in args.kinds.split(","):
        for code in args.code.split(","):
            params = {
                "code": code,
                "kind": kind,
                "outage_s": args.outage_s,
                "code_path": old_path if code == "old" else "",
            }
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(params)],
                capture_output=True,
                text=True,
                timeout=1200,
                cwd=tempfile.gettempdir(),
            )
            if done.returncode != 0:
                raise SystemExit(f"the {code}/{kind} child failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nA Slurm job's watch through a proxy that fails for {args.outage_s:.0f}s, 2 s polls")
    print("outage | code | first warning after | streaming resumed after the node came back")
    for r in results:
        noticed = "none" if r["noticed_after_s"] is None else f"{r['noticed_after_s']:.1f} s"
        resumed = "never (300 s)" if r["resumed_after_s"] is None else f"{r['resumed_after_s']:.1f} s"
        print(f"{r['kind']:>6} | {r['code']:>4} | {noticed} | {resumed}")
    print("minimum: resumed at once (0 s)")


if __name__ == "__main__":
    main()
