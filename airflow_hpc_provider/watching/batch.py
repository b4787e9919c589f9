"""Shared, batched AWS Batch polling: N watched jobs cost ceil(N/100) DescribeJobs per interval.

Inside one process all watchers of one (aws connection, region) on one event loop share one
:class:`BatchPoller`, reference-counted like the SSH cluster poller (``cluster.py``), whose event
types it reuses. Each interval it asks DescribeJobs about every watched job, 100 ids per call, and
reads the new CloudWatch lines of running jobs with FilterLogEvents, 100 streams per call (streams
that do not exist yet cost a bounded number of extra calls: see :mod:`batch_streams`).

Rules:

* only DescribeJobs ends a watch: SUCCEEDED is success, FAILED carries statusReason and the exit
  code (``None`` when Batch reports none, never 0);
* a job DescribeJobs does not know is never a success: after ``missing_grace_s`` it is ``LOST``
  (the engine's absence rules, :mod:`.rules`, decide, as for every source);
* throttling (and any failed call) concludes nothing: the poller backs off, with jitter, and
  tells the watchers; only credentials refused outright end the watches (the jobs are left alone);
* the final lines are read in the same poll that sees the job end, before ``JobEnded``;
* a job's new lines go out in slices of at most ``lines_per_slice`` lines, each followed by the
  position that covers it, so a watcher can commit its position slice by slice;
* a watcher that owns the job *claims* it (the job tag :data:`~dialects.batch.CLAIM_TAG`): a job
  seen ended before its end is reported, the others within the first polls (100 per poll): a later
  try never adopts a job a trigger watched.

boto3 is blocking, so every call runs in a worker thread; the event loop only sorts answers.
What is kept per job is in :mod:`.batch_tracks`; the CloudWatch reading in :mod:`.batch_lines`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.dialects.batch import LogStream
from airflow_hpc_provider.errors import Throttled
from airflow_hpc_provider.hooks.batch import AUTH_CODES, THROTTLING_CODES, BatchHook, error_code, error_text
from airflow_hpc_provider.jobs import JobState, JobStatus
from airflow_hpc_provider.watching.batch_lines import CloudWatchLines
from airflow_hpc_provider.watching.batch_logs import LogPosition
from airflow_hpc_provider.watching.batch_streams import LogStreamPlanner
from airflow_hpc_provider.watching.batch_tracks import BatchTrack, BatchWatchEvent, LogProgress
from airflow_hpc_provider.watching.events import (
    JobEnded,
    Notice,
    WatchEvent,
    until_the_end,
)
from airflow_hpc_provider.watching.loop import Failure, LoopSettings, PollLoop
from airflow_hpc_provider.watching.pacing import MIN_POLL_SPACING_S
from airflow_hpc_provider.watching.rules import AbsenceRules, settle
from airflow_hpc_provider.watching.sharing import SharedPollers

log = logging.getLogger(__name__)

CLAIM_CONCURRENCY = 10


@dataclass(frozen=True)
class BatchTarget:
    """Which AWS account and region a job lives in: the poller is shared per target."""

    aws_conn_id: str | None
    region_name: str | None = None

    def hook(self) -> BatchHook:
        return BatchHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)


@dataclass(frozen=True)
class BatchPollerSettings:
    interval_s: float = 10.0
    missing_grace_s: float = 300.0
    max_backoff_s: float = 120.0
    max_log_pages: int = 20  # per FilterLogEvents chunk per poll; the rest comes next poll
    # The most lines a watcher gets before the position that covers them: what a triggerer killed
    # at the worst moment may repeat after its restart.
    lines_per_slice: int = 500
    # FilterLogEvents calls per poll beyond one per 100 existing streams: finding streams that
    # exist (new, or missing so far) costs at most this.
    extra_log_calls_per_poll: int = 8
    # A stream found missing is tried again after one interval, then twice as long each time, up to this.
    max_missing_probe_s: float = 60.0
    claim_attempts: int = 3
    claims_per_poll: int = 100


def absence_rules(settings: BatchPollerSettings) -> AbsenceRules:
    """The rules (rules.py) for Batch jobs: DescribeJobs is the only source of truth."""
    return AbsenceRules(source="AWS Batch", missing_grace_s=settings.missing_grace_s)


class BatchPoller:
    """Watches many Batch jobs of one account and region with batched calls, one poll per interval."""

    def __init__(self, target: BatchTarget, settings: BatchPollerSettings, hook: BatchHook | None = None) -> None:
        self.target = target
        self.settings = settings
        self.rules = absence_rules(settings)
        self._hook = hook
        self._tracks: dict[str, BatchTrack] = {}
        self._loop = PollLoop(self, LoopSettings(interval_s=settings.interval_s, max_backoff_s=settings.max_backoff_s))
        self.polls = 0
        self.describe_calls = 0
        self.claim_calls = 0
        planner = LogStreamPlanner(
            extra_calls_per_poll=settings.extra_log_calls_per_poll,
            first_probe_s=settings.interval_s,
            max_probe_s=max(settings.max_missing_probe_s, settings.interval_s),
        )
        self._lines = CloudWatchLines(
            planner, self._call, max_log_pages=settings.max_log_pages, lines_per_slice=settings.lines_per_slice
        )

    @property
    def log_calls(self) -> int:
        """FilterLogEvents calls made (bench counter only, like ``describe_calls``)."""
        return self._lines.log_calls

    # -- watching ----------------------------------------------------------------------------------

    async def watch(
        self,
        job_id: str,
        *,
        include_children: bool = False,
        position: LogPosition | None = None,
        claim: str | None = None,
    ) -> AsyncGenerator[BatchWatchEvent, None]:
        """The job's events. ``claim``: tag the job as watched with this value (owners only)."""
        queue: asyncio.Queue[BatchWatchEvent] = asyncio.Queue()
        track = self._tracks.get(job_id)
        if track is None:
            track = self._tracks[job_id] = BatchTrack(job_id, include_children, position or LogPosition())
        track.include_children = track.include_children or include_children
        track.claim = track.claim or claim
        track.queues.append(queue)
        self._loop.ensure_running("hpc-batch-poller")
        self._loop.wake.set()

        def leave() -> None:
            if queue in track.queues:
                track.queues.remove(queue)
            if not track.queues and self._tracks.get(job_id) is track:
                del self._tracks[job_id]

        async for event in until_the_end(queue, leave):
            yield event

    async def close(self) -> None:
        await self._loop.stop()

    async def _call(self, service: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        if self._hook is None:
            self._hook = await asyncio.to_thread(self.target.hook)
        hook = self._hook

        def call() -> dict[str, Any]:
            result: dict[str, Any] = getattr(hook.client(service), operation)(**kwargs)
            return result

        try:
            return await asyncio.to_thread(call)
        except ClientError as error:
            if error_code(error) in THROTTLING_CODES:
                raise Throttled(f"{operation}: {error_text(error)}") from error
            raise

    # -- what the loop asks (watching/loop.py) -----------------------------------------------------

    name = batch.NAME

    @property
    def where(self) -> str:
        return f"connection {self.target.aws_conn_id}, region {self.target.region_name or 'default'}"

    def watching(self) -> bool:
        return bool(self._tracks)

    async def poll(self, *, with_status: bool) -> None:
        await self.poll_once()

    def failure(self, error: Exception) -> Failure:
        if isinstance(error, ClientError) and error_code(error) in AUTH_CODES:
            return Failure.FATAL
        if isinstance(error, ClientError | Throttled | BotoCoreError | OSError):
            return Failure.OUTAGE
        return Failure.UNREADABLE

    def explain(self, error: Exception) -> str:
        if isinstance(error, ClientError) and error_code(error) in AUTH_CODES:
            return f"AWS refused the credentials of {self.where}: {error_text(error)}"
        if isinstance(error, ClientError):
            return f"AWS Batch query failed: {error_text(error)}"
        return f"AWS throttled or unreachable ({error})"

    async def probe(self, *, timeout_s: float) -> bool | None:
        return None  # the next call is the probe: backoff alone paces it

    def work_waiting(self) -> bool:
        return False  # every round is a status poll: lines and positions go with it

    def acknowledgements_pending(self) -> bool:
        return False

    def status_due(self, now: float, interval_s: float) -> float:
        # Never more than a poll a second, whatever the interval: Batch's API limits are per account.
        return now + max(interval_s, MIN_POLL_SPACING_S)

    def tell_all(self, event: WatchEvent) -> None:
        for track in self._tracks.values():
            track.send(event)

    async def describe(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Every id, 100 per DescribeJobs call, the calls made concurrently."""
        chunks = [list(job_ids[i : i + batch.DESCRIBE_BATCH]) for i in range(0, len(job_ids), batch.DESCRIBE_BATCH)]
        self.describe_calls += len(chunks)
        answers = await asyncio.gather(*(self._call("batch", "describe_jobs", jobs=chunk) for chunk in chunks))
        return {str(job["jobId"]): job for answer in answers for job in answer.get("jobs", [])}

    async def poll_once(self) -> None:
        tracks = dict(self._tracks)
        if not tracks:
            return
        ids = list(tracks)
        ids += [child for track in tracks.values() if track.include_children for child in track.children]
        found = await self.describe(ids)
        self.polls += 1
        self._loop.answered()  # before any job ends, so every watcher that was warned hears it
        now = time.monotonic()
        ended: list[tuple[BatchTrack, JobStatus]] = []
        reads: list[tuple[BatchTrack, LogStream]] = []
        for job_id, track in tracks.items():
            description = found.get(job_id)
            final = self._settle(track, description, now)
            if description is None:
                if final is not None:
                    ended.append((track, final))
                continue
            if track.include_children:
                size = batch.array_size_of(description)
                track.children = [f"{job_id}:{index}" for index in range(size)]
                missing = [child for child in track.children if child not in found]
                if final is not None and missing:  # ended before its children were ever asked about
                    found.update(await self.describe(missing))
            streams = batch.log_streams_of(description)
            for index, child in enumerate(track.children if track.include_children else []):
                if child in found:
                    streams += batch.log_streams_of(found[child], child_index=index)
            running = track.last is not None and track.last.state is JobState.RUNNING
            if streams and (final is not None or running or track.include_children):
                reads += [(track, stream) for stream in streams]
            if final is not None:
                ended.append((track, final))
        await self._claim([(track, found[job_id]) for job_id, track in tracks.items() if job_id in found])
        await self._lines.read(reads, ended_ids={track.job_id for track, _ in ended})
        for track, status in ended:
            track.send(JobEnded(status))

    async def _claim(self, described: list[tuple[BatchTrack, Mapping[str, Any]]]) -> None:
        """Tag the owned jobs not tagged yet, ended ones first (before their end is reported).

        At most ``claims_per_poll`` TagResource calls per poll, ``CLAIM_CONCURRENCY`` at a time: a
        triggerer that starts with a thousand new triggers spreads their claims over a few polls
        instead of bursting into Batch's API limits. Throttling ends this poll's claims without
        counting against a job; any other refusal counts, and after ``claim_attempts`` the job is
        left unclaimed (said in its log; the try that reads its end claims it from the worker).
        """
        pending: list[tuple[BatchTrack, str, bool]] = []
        for track, description in described:
            if track.claim is None or track.claimed or track.claim_failures >= self.settings.claim_attempts:
                continue
            if batch.CLAIM_TAG in (description.get("tags") or {}):
                track.claimed = True
            elif description.get("jobArn"):
                ended = str(description.get("status")) in batch.FINAL_STATES
                pending.append((track, str(description["jobArn"]), ended))
        pending.sort(key=lambda item: not item[2])  # ended jobs first
        pending = pending[: self.settings.claims_per_poll]
        for start in range(0, len(pending), CLAIM_CONCURRENCY):
            group = pending[start : start + CLAIM_CONCURRENCY]
            self.claim_calls += len(group)
            results = await asyncio.gather(
                *(
                    self._call("batch", "tag_resource", resourceArn=arn, tags={batch.CLAIM_TAG: str(track.claim)})
                    for track, arn, _ in group
                ),
                return_exceptions=True,
            )
            throttled = False
            for (track, _, _), result in zip(group, results, strict=True):
                if not isinstance(result, BaseException):
                    track.claimed = True
                elif not isinstance(result, Exception):
                    raise result
                elif isinstance(result, Throttled):
                    throttled = True
                else:
                    track.claim_failures += 1
                    if track.claim_failures == 1:
                        track.send(
                            Notice(
                                f"could not tag AWS Batch job {track.job_id} as watched ({result}); if this "
                                "task is retried, the retry may adopt this job instead of submitting its own"
                            )
                        )
            if throttled:
                return

    def _settle(self, track: BatchTrack, description: Mapping[str, Any] | None, now: float) -> JobStatus | None:
        """Apply the absence rules (rules.py); return the final status once there is one."""
        verdict = settle(track.standing, batch.observe(description), now, self.rules)
        for event in verdict.events:
            track.send(event)
        return verdict.final


# --- sharing within a process ---------------------------------------------------------------------


_shared: SharedPollers[BatchPoller] = SharedPollers()


@contextlib.asynccontextmanager
async def shared_batch_poller(target: BatchTarget, settings: BatchPollerSettings) -> AsyncIterator[BatchPoller]:
    """The process's Batch poller for this connection and region on this loop (see :mod:`sharing`)."""
    key = (target.aws_conn_id, target.region_name)
    async with _shared.use(key, lambda: BatchPoller(target, settings), settings) as poller:
        yield poller


# LogProgress and BatchWatchEvent moved to batch_tracks.py: still importable from here.
__all__ = [
    "BatchPoller",
    "BatchPollerSettings",
    "BatchTarget",
    "BatchWatchEvent",
    "LogProgress",
    "absence_rules",
    "shared_batch_poller",
]
