"""Freshness scheduling: one pull scheduler per served model, shared by every camera stream.

Each open stream keeps at most its newest undecoded frame in a slot (a `BLOCK` stream keeps up
to its window, in order, and is never dropped from). The scheduler does not push frames at the
model as they arrive: it *pulls* when the model can take more: when one of its
`instance_count` runners is free, so a chosen frame never waits behind another run (for
pipelines and detectors, which decode in the shared pool first, one more batch is pulled
just before a running one is expected to end, so the model does not idle during the decode).

Each pull takes frames from the streams in least-recently-served order (detectors, pipelines
and cascades: in order of the device time their frames cost, server/frames/cost_shares.py),
one per stream per round, up to the batch size the `BatchSizer` found cheapest per frame (at
most the plan's: a larger batch only ages its results unless it makes frames cheaper); a
`BLOCK` stream may add
more rows only after every other stream had its turn. Only then are the chosen frames decoded,
on the model's runner together with the run (server/frames/work/batch.py), so a frame replaced
by a newer one never costs a decode. A frame older than its stream's `max_age_ms` when it would
be chosen or started is dropped as `stale` and never runs. Frames of every other kind of work
(detectors, pipelines, cascades: server/frames/work/dispatch.py decides) run one by one through
`run_frame` instead.

Flow credits (streams whose client asked for them, session.py): such a client sends a frame
only when it holds a credit, so the scheduler hands credits out just in time. While every runner
is busy, it offers one, a little more than the recent slowest credit lag (grant to arrival)
before the next pull is due, to each stream the next pull will serve, in the order that pull
will take them (least recently served, or lowest cost tag); an idle model offers them at once.
The frame then arrives shortly before it runs, about as fresh as a replaced one would have
been, and no frame is encoded and sent only to be replaced. A credited frame is never replaced
by a newer one, so one that a pull passed over (the credits every stream holds at open, 16
frames at 16 cameras; a frame that came after its pull) would wait out whole rounds, and one
whose pull is late (a run longer than learned) ages meanwhile: once it is several credit leads
old, its stream gets a fresh credit when its turn comes near (and, while a pull is late, each
time that much more has passed), and the newer frame replaces it. A pull that reaches a
passed-over one that old skips it for this round.

Fair at every unit: a frame run on its own takes its turn, by the same cost order, before each
unit of its work (a detector run, a crop batch, a cascade stage; cost_shares.UnitTurns), so a
page of text yields the device to the honest frames that came after it. A frame waiting for its
turn, or one whose stream was past its share when chosen, holds no pull slot: it must not keep
the frames it yields to from starting.

All or nothing: frames of every other kind run as tasks of their stream; when the stream
closes (or the server stops), they are cancelled, and with them every stage, pyramid level and
crop batch they still had queued (server/concurrency.py), so a frame nobody will read stops
costing the device at once. A plain batch already on a runner finishes its one run.

Hot swap: every pull resolves the model anew and holds a lease on that version until its
results are delivered, so an old version retires only after its last batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from server.errors import EdgeError, Overloaded
from server.frames.batch_sizer import BatchSizer
from server.frames.cost_shares import CostShares, FrameTurn, UnitTurns
from server.frames.types import BatchFrame, FrameAnalysis, StreamOptions, WaitingFrame
from server.frames.work.batch import FrameBatchJob
from server.frames.work.dispatch import FrameWork, frame_work, run_frame
from server.models.version import ModelVersion
from server.observability.failure_log import FailureLog
from server.observability.metrics import outcome_of

log = logging.getLogger(__name__)

# A pull of frames run on their own frees its slot once the frames left have taken this many
# times a usual frame's time: a frame far over its share (a page of text) then runs on outside
# the slots, its stream billed for all of it, and never holds back the next pull.
DETACH_AFTER = 1.5

ModelResolver = Callable[[], ModelVersion]

# Grant to arrival of a credited frame before anything is learned (a 720p JPEG encode and a
# round trip), the least lead ever used, and how much of the learned lag the lead adds as margin.
CREDIT_LAG_START_S = 0.03
CREDIT_LEAD_MIN_S = 0.005
CREDIT_LEAD_MARGIN = 1.5
# A credited frame that a pull passed over is replaced by a fresh one when it is this many
# credit leads old (a fresh one costs the stream about one lead), and at least this old.
CREDIT_REFRESH_LEADS = 4.0
CREDIT_REFRESH_MIN_S = 0.1


class ScheduledStream(Protocol):
    """What the scheduler needs of a stream (a FrameSession, server/frames/session.py): frames
    to take, and somewhere to deliver what became of each."""

    @property
    def options(self) -> StreamOptions: ...

    @property
    def lossless(self) -> bool: ...

    @property
    def has_frame(self) -> bool: ...

    @property
    def expects_frame(self) -> bool: ...

    @property
    def flow_credits(self) -> bool: ...

    def offer_credit(self, replace_before: float) -> bool: ...

    def take(self, now: float | None, model: ModelVersion | None) -> WaitingFrame | None: ...

    def stale_after(self, waiting: WaitingFrame) -> float | None: ...

    def deliver_result(
        self, model: ModelVersion, waiting: WaitingFrame, analysis: FrameAnalysis
    ) -> None: ...

    def deliver_error(self, sequence: int, error: EdgeError) -> None: ...

    def charged(self, cost_s: float) -> None: ...

    def deliver_overloaded(
        self, waiting: WaitingFrame, error: Overloaded, model: ModelVersion
    ) -> None: ...

    def deliver_stale(self, waiting: WaitingFrame, model: ModelVersion) -> None: ...


@dataclass
class Pick:
    session: ScheduledStream
    waiting: WaitingFrame
    token: int = 0  # its charge in the stream's cost share (frames run on their own)
    settled: bool = False  # its result, error or drop has been handed to the stream
    past_share: bool = False  # its stream was past its cost share when it was chosen


class FrameScheduler:
    """Pulls the freshest frames of the registered streams into the model, fairly."""

    def __init__(self, resolve_model: ModelResolver, preprocess_pool: Executor, name: str) -> None:
        self._resolve = resolve_model
        self._pool = preprocess_pool
        self._name = name
        self._failures = FailureLog(log)
        # Insertion order is the serving order: a served stream moves to the back.
        self._sessions: dict[int, ScheduledStream] = {}
        # Device time per stream, for frames run on their own (cost_shares.py).
        self._shares = CostShares()
        # The same order at every unit of those frames' work (a crop batch, a detector run).
        self._turns = UnitTurns(self._shares)
        self._wake = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        # Frames running on their own (pipelines, cascades, detectors), by stream: closing a
        # stream cancels them, and with them every stage and crop batch they still had.
        self._frames: dict[int, set[asyncio.Task[None]]] = {}
        # Loop times at which running batches are expected to finish (None: still decoding).
        self._expected_end: dict[asyncio.Task[None], float | None] = {}
        # Moving averages of one batch's model run and of its decode, for timing the next pull.
        self._run_s = 0.0
        # Moving average of a frame's time from start to result, for frames run on their own.
        self._frame_s = 0.0
        self._prepare_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Learned per model version: a hot swap may bring a model that batches differently.
        self._sizer = BatchSizer()
        self._sized_version: ModelVersion | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        # Flow credits: the row limit and loop time of the last pull (how many streams the next
        # one serves; a frame that came before it and was not taken was passed over), whether
        # pulls go by cost, the recent slowest grant-to-arrival, and the timer that offers
        # credits before a pull.
        self._last_rows = 1
        self._last_pull = float("-inf")
        self._by_cost = False
        self._credit_lag_s = CREDIT_LAG_START_S
        self._credit_timer: asyncio.TimerHandle | None = None
        # Plain batches have no expected end (they decode on the runner): their start times and
        # the moving average of a whole batch, decode included, stand in for it.
        self._started: dict[asyncio.Task[None], float] = {}
        self._batch_s = 0.0

    # ---- streams ----

    def add(self, session: ScheduledStream) -> None:
        self._sessions[id(session)] = session
        self._shares.add(id(session))
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name=f"frames-{self._name}")

    def remove(self, session: ScheduledStream) -> None:
        """Forget a stream at once: its waiting frames go, its running frames are cancelled
        (all their parts with them), its share goes to the others."""
        self._sessions.pop(id(session), None)
        self._shares.remove(id(session))
        for task in self._frames.pop(id(session), set()):
            task.cancel()
        self._wake.set()

    def frame_waiting(self) -> None:
        self._wake.set()

    def credit_used(self, lag_s: float) -> None:
        """A credited frame arrived `lag_s` after its credit was granted. The lead follows the
        slowest recent arrival at once and forgets it slowly: a frame that arrives after its pull
        waits a whole round (seconds at 16 cameras), one that arrives early only a few ms."""
        if lag_s >= self._credit_lag_s:
            self._credit_lag_s = lag_s
        else:
            self._credit_lag_s = 0.95 * self._credit_lag_s + 0.05 * lag_s

    @property
    def streams(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._credit_timer is not None:
            self._credit_timer.cancel()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        # Shutdown never waits for frames nobody will read: their streams are gone by now.
        frames = [task for running in self._frames.values() for task in running]
        for task in frames:
            task.cancel()
        await asyncio.gather(*self._batches, *frames, return_exceptions=True)

    # ---- pulling ----

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._sessions:
                started = self._start_batch()
                if not started:
                    break

    def _start_batch(self) -> bool:
        """Start one batch if the model has room and a frame is waiting; False otherwise."""
        try:
            model = self._resolve()
        except EdgeError as exc:
            return self._fail_everything(exc)
        runners = model.plan.instance_count
        plain = frame_work(model.manifest) is FrameWork.BATCH
        if len(self._batches) >= runners + 1:
            return False
        # A plain model decodes on its runner: a batch pulled before a runner is free would
        # only wait there, its frames ageing (age p99 71-78 ms without, 125-143 ms with such
        # a prefetch at 8 cameras). Pipelines decode in the pool first, so they prefetch.
        if len(self._batches) == runners and (plain or not self._prefetch_due()):
            self._offer_credits_when_due()
            return False
        max_rows = max(model.plan.max_batch_size, 1)
        if not plain:  # frames run one by one; the model's batcher groups them
            rows = max_rows
        else:
            if model is not self._sized_version:
                self._sizer, self._sized_version = BatchSizer(), model
            rows = self._sizer.rows(max_rows, self._streams_waiting)
        self._by_cost = not plain
        picks = self._pick_by_cost(rows, model) if not plain else self._pick(rows, model)
        if not picks:
            self._offer_credits(rows)  # the model is idle: credited streams may send now
            return False
        self._last_rows = rows  # as many as the pull could take: it takes every credited frame
        self._last_pull = asyncio.get_running_loop().time()
        lease = contextlib.ExitStack()
        lease.enter_context(model.lease())  # taken now, so a swap cannot retire it under us
        task = asyncio.create_task(self._run_batch(model, picks, lease))
        self._batches.add(task)
        self._expected_end[task] = None
        if plain:
            self._started[task] = asyncio.get_running_loop().time()
        task.add_done_callback(self._batch_done)
        return True

    def _prefetch_due(self) -> bool:
        """Every runner is busy. Pull the next batch only when the soonest running batch will
        end within one decode: frames pulled earlier would wait a whole run and be older than
        the ones arriving meanwhile. Otherwise wake up then."""
        ends = [end for end in self._expected_end.values() if end is not None]
        if not ends:
            return False  # still decoding: its run has not started, nothing ends soon
        loop = asyncio.get_running_loop()
        due = min(ends) - self._prepare_s - 0.001
        if loop.time() >= due:
            return True
        if self._timer is None or self._timer.when() > due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(due, self._timer_fired)
        return False

    def _offer_credits_when_due(self) -> None:
        """Every runner is busy: offer credits one learned credit lag before the next pull is
        due (the soonest running batch's end, less one decode), so credited frames arrive just
        before it; otherwise wake up then."""
        if not any(session.flow_credits for session in self._sessions.values()):
            return
        ends = [end for end in self._expected_end.values() if end is not None]
        if self._batch_s:
            ends += [start + self._batch_s for start in self._started.values()]
        if not ends:
            return  # still decoding: `_running` wakes the dispatcher when the run starts
        loop = asyncio.get_running_loop()
        lead = self._credit_lead_s()
        due = min(ends) - self._prepare_s - lead
        if loop.time() >= due:
            self._offer_credits(self._last_rows)
            # The pull is late (a run longer than learned): look again when a waiting credited
            # frame may have aged enough to be replaced by a fresh one.
            due = loop.time() + self._refresh_age_s()
        if self._credit_timer is None or self._credit_timer.when() > due:
            if self._credit_timer is not None:
                self._credit_timer.cancel()
            self._credit_timer = loop.call_at(due, self._credit_timer_fired)

    def _credit_timer_fired(self) -> None:
        self._credit_timer = None
        self._wake.set()

    def _offer_credits(self, rows: int) -> None:
        """Offer a credit to each of the first `rows` streams in the order the next pull takes
        them that has no frame on its way, or only one that has waited long enough to be worth
        replacing; streams without flow credits decline, and a stream with a frame waiting
        counts as served."""
        replace_before = asyncio.get_running_loop().time() - self._refresh_age_s()
        for session in self._serving_order():
            if rows <= 0:
                return
            if session.offer_credit(replace_before) or session.expects_frame:
                rows -= 1

    def _replace_before(self) -> float:
        """At a pull: a credited frame that arrived before this loop time was passed over by
        the last pull and has aged enough that a fresh one is worth its round trip (and the
        pull's wait for it): its stream gets a credit instead of running it."""
        now = asyncio.get_running_loop().time()
        return min(self._last_pull, now - self._refresh_age_s())

    def _refresh_age_s(self) -> float:
        """A waiting credited frame this old is replaced by a fresh one when its stream's turn
        comes (a fresh one costs about one credit lead)."""
        return max(CREDIT_REFRESH_LEADS * self._credit_lead_s(), CREDIT_REFRESH_MIN_S)

    def _credit_lead_s(self) -> float:
        """How long before a pull a credit is offered: a margin over the recent slowest
        grant-to-arrival."""
        return max(CREDIT_LEAD_MARGIN * self._credit_lag_s, CREDIT_LEAD_MIN_S)

    def _serving_order(self) -> list[ScheduledStream]:
        """The streams in the order the next pull would take their frames (`_pick`,
        `_pick_by_cost`), whether they have one waiting or not."""
        if not self._by_cost:
            return list(self._sessions.values())
        now = asyncio.get_running_loop().time()
        return sorted(self._sessions.values(), key=lambda s: self._shares.tag(id(s), now))

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._expected_end.pop(task, None)
        started = self._started.pop(task, None)
        if started is not None and not task.cancelled():
            took = asyncio.get_running_loop().time() - started
            self._batch_s = 0.8 * self._batch_s + 0.2 * took if self._batch_s else took
        self._wake.set()

    def _running(self, prepare_s: float, pull: asyncio.Task[None] | None = None) -> None:
        """The current batch (`pull`, or the current task) finished decoding and goes to the
        model now."""
        task = pull or asyncio.current_task()
        assert task is not None
        if task not in self._expected_end or self._expected_end[task] is not None:
            return  # already running, or already done (a late frame of a finished batch)
        self._prepare_s = 0.8 * self._prepare_s + 0.2 * prepare_s if self._prepare_s else prepare_s
        loop = asyncio.get_running_loop()
        queued_behind = max([end for end in self._expected_end.values() if end] or [loop.time()])
        self._expected_end[task] = max(queued_behind, loop.time()) + self._run_s
        self._wake.set()

    def _ran(self, run_s: float) -> None:
        self._run_s = 0.8 * self._run_s + 0.2 * run_s if self._run_s else run_s

    def _streams_waiting(self) -> int:
        return sum(1 for session in self._sessions.values() if session.has_frame)

    def _pick(self, max_rows: int, model: ModelVersion) -> list[Pick]:
        now = asyncio.get_running_loop().time()
        replace_before = self._replace_before()
        picks: list[Pick] = []
        served: list[ScheduledStream] = []
        first_round = True
        while len(picks) < max_rows:
            took = False
            for session in list(self._sessions.values()):
                if len(picks) >= max_rows:
                    break
                if not first_round and not session.lossless:
                    continue
                if first_round and session.offer_credit(replace_before):
                    continue  # its passed-over frame is being replaced by a fresh one
                waiting = session.take(now, model)
                if waiting is None:
                    continue
                picks.append(Pick(session, waiting))
                took = True
                if first_round:
                    served.append(session)
            first_round = False
            if not took:
                break
        for session in served:  # least recently served first next time
            key = id(session)
            if key in self._sessions:
                self._sessions[key] = self._sessions.pop(key)
        return picks

    def _pick_by_cost(self, max_rows: int, model: ModelVersion) -> list[Pick]:
        """Frames whose cost depends on their content: one per stream, lowest start tag first,
        of the streams within one cheap frame of the lowest (the others had their share);
        then BLOCK streams may add rows."""
        now = asyncio.get_running_loop().time()
        margin = self._shares.margin_s()
        open_tags = {key: self._shares.tag(key, now) for key in self._sessions}
        fair = min(open_tags.values(), default=0.0) + margin
        tags = {
            key: open_tags[key]
            for key, session in self._sessions.items()
            if session.has_frame and self._shares.may_start_another(key, now, fair)
        }
        if not tags:
            return []
        lowest = min(tags.values())
        replace_before = self._replace_before()
        picks: list[Pick] = []
        served: list[ScheduledStream] = []
        for key in sorted(tags, key=tags.__getitem__):  # stable: least recently served first
            if len(picks) >= max_rows or tags[key] - lowest > margin:
                break
            session = self._sessions[key]
            if session.offer_credit(replace_before):
                continue  # its passed-over frame is being replaced by a fresh one
            waiting = session.take(now, model)
            if waiting is None:
                continue
            token = self._shares.started(key, now)
            picks.append(Pick(session, waiting, token, past_share=tags[key] > fair))
            served.append(session)
        while len(picks) < max_rows:
            took = False
            for session in served:
                if len(picks) >= max_rows or not session.lossless:
                    continue
                waiting = session.take(now, model)
                if waiting is None:
                    continue
                picks.append(Pick(session, waiting, self._shares.started(id(session), now)))
                took = True
            if not took:
                break
        for session in served:  # least recently served first among equals next time
            key = id(session)
            if key in self._sessions:
                self._sessions[key] = self._sessions.pop(key)
        return picks

    def _settle(self, pick: Pick, cost_s: float | None) -> None:
        """Bill a frame's cost to its stream (None: unmeasured, the estimate stands)."""
        pick.settled = True
        if pick.token:
            self._shares.settled(id(pick.session), pick.token, cost_s)
        if cost_s is not None:
            pick.session.charged(cost_s)

    def _fail_everything(self, error: EdgeError) -> bool:
        """The model is gone: every waiting frame gets the error (a stream never hangs)."""
        for session in list(self._sessions.values()):
            while (waiting := session.take(None, None)) is not None:
                session.deliver_error(waiting.frame.sequence, error)
        return False

    async def _run_batch(
        self, model: ModelVersion, picks: list[Pick], lease: contextlib.ExitStack
    ) -> None:
        loop = asyncio.get_running_loop()
        with lease:
            try:
                await self._decode_and_run(model, picks, loop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.failed(f"frames of {self._name}: a batch failed", exc)
                failed_at = loop.time()
                for pick in picks:
                    if not pick.settled:
                        self._settle(pick, None)
                        # A runtime failure is a failed inference: counted (stats, telemetry,
                        # edgefleet_requests_total{outcome="runtime_error"}) like a unary one.
                        model.record_failure(failed_at - pick.waiting.arrival, outcome_of(exc))
                        pick.session.deliver_error(
                            pick.waiting.frame.sequence, EdgeError("internal error")
                        )

    async def _decode_and_run(
        self, model: ModelVersion, picks: list[Pick], loop: asyncio.AbstractEventLoop
    ) -> None:
        if frame_work(model.manifest) is not FrameWork.BATCH:
            # Several models or per-frame geometry: each chosen frame runs its own analysis;
            # frames chosen together still share the model's batches in its batcher.
            pull = asyncio.current_task()
            assert pull is not None
            started = [self._start_frame(model, pick, loop, pull) for pick in picks]
            tasks = [task for task, _ in started]
            # The pull's slot is free when its frames no longer need it (done, or waiting for
            # their turn while others' frames run, or past their share from the start: they
            # yield to the others at every unit, so they must not keep the others' frames from
            # starting), or when the ones left have run DETACH_AFTER times as long as a frame
            # usually takes (they run on, tracked by stream, and are cancelled with it).
            detach_s = self._frame_s * DETACH_AFTER if self._frame_s else None
            try:
                if tasks:
                    await asyncio.wait([turn.released for _, turn in started], timeout=detach_s)
            except asyncio.CancelledError:
                for task in tasks:
                    task.cancel()
                raise
            return
        job = FrameBatchJob(
            model.manifest, model.labels, model.output_names, model.plan.max_batch_size > 0,
            [BatchFrame(pick.waiting.frame, pick.session.options,
                        pick.session.stale_after(pick.waiting)) for pick in picks],
        )  # fmt: skip
        try:
            run = await model.run_job(job)
        except Exception as exc:
            self._fail_picks(model, picks, exc, loop, "a batch failed")
            return
        finished = loop.time()
        times = run.times
        if times.batch_size:  # one row per frame that ran
            model.record_execution(times.batch_size, times.infer_s)
            for _ in range(times.batch_size):
                model.record_queue_wait(times.queue_s)
            if model is self._sized_version:
                self._sizer.ran(times.batch_size, times.infer_s)
        # The batch's decode and run, shared by the frames that ran in it.
        work_s = times.preprocess_s + times.infer_s + times.postprocess_s
        cost_each = work_s / times.batch_size if times.batch_size else 0.0
        for pick, output in zip(picks, run.outputs, strict=True):
            ran = not output.stale and output.failure is None
            self._settle(pick, cost_each if ran else None)
            session, waiting = pick.session, pick.waiting
            if output.stale:
                session.deliver_stale(waiting, model)
            elif isinstance(output.failure, EdgeError):
                model.record_failure(finished - waiting.arrival, outcome_of(output.failure))
                session.deliver_error(waiting.frame.sequence, output.failure)
            elif output.failure is not None:
                self._failures.failed(f"frames of {self._name}: a frame failed", output.failure)
                model.record_failure(finished - waiting.arrival, outcome_of(output.failure))
                session.deliver_error(waiting.frame.sequence, EdgeError("internal error"))
            else:
                analysis = FrameAnalysis(
                    version=model.version, labels=output.labels, tensors=output.tensors,
                    times=times,
                )  # fmt: skip
                session.deliver_result(model, waiting, analysis)

    def _start_frame(
        self,
        model: ModelVersion,
        pick: Pick,
        loop: asyncio.AbstractEventLoop,
        pull: asyncio.Task[None],
    ) -> tuple[asyncio.Task[None], FrameTurn]:
        """Run one frame as a task of its stream (cancelled with it); `pull` is the pull that
        chose it, whose expected end its start sets."""
        key = id(pick.session)
        turn = self._turns.turn(key, pick.token)
        if pick.past_share:
            turn.release()
        task = asyncio.create_task(self._analyze_one(model, pick, loop, pull, turn))
        task.add_done_callback(lambda _: turn.release())
        if key not in self._sessions:  # closed while this pull was chosen
            task.cancel()
            return task, turn
        running = self._frames.setdefault(key, set())
        running.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            running.discard(done)
            if not running and self._frames.get(key) is running:
                del self._frames[key]

        task.add_done_callback(forget)
        return task, turn

    async def _analyze_one(
        self,
        model: ModelVersion,
        pick: Pick,
        loop: asyncio.AbstractEventLoop,
        pull: asyncio.Task[None],
        turn: FrameTurn,
    ) -> None:
        if not pull.done():
            self._running(0.0, pull)
        started = loop.time()
        self._turns.began(turn)
        try:
            with model.lease():  # its own: the frame may outlive its pull (DETACH_AFTER)
                analysis = await run_frame(
                    model, pick.waiting.frame, pick.session.options, self._pool, turn
                )
        except Exception as exc:
            self._fail_picks(model, [pick], exc, loop, "a frame failed")
            return
        finally:
            self._turns.ended(turn)
        self._ran(analysis.times.infer_s)
        took = loop.time() - started
        if not self._frame_s or took <= self._frame_s * DETACH_AFTER:
            self._frame_s = 0.8 * self._frame_s + 0.2 * took if self._frame_s else took
        times = analysis.times
        self._settle(pick, times.preprocess_s + times.infer_s + times.postprocess_s)
        pick.session.deliver_result(model, pick.waiting, analysis)

    def _fail_picks(
        self,
        model: ModelVersion,
        picks: list[Pick],
        exc: Exception,
        loop: asyncio.AbstractEventLoop,
        what: str,
    ) -> None:
        """Answer every pick of a run that raised. A runtime's own error is a failed inference
        too: logged, counted as runtime_error and answered "internal error"."""
        error: EdgeError
        if isinstance(exc, EdgeError):
            error, outcome = exc, None
        else:
            self._failures.failed(f"frames of {self._name}: {what}", exc)
            error, outcome = EdgeError("internal error"), outcome_of(exc)
        for pick in picks:
            self._settle(pick, None)
            self._failed(model, pick, error, loop, outcome)

    @staticmethod
    def _failed(
        model: ModelVersion,
        pick: Pick,
        error: EdgeError,
        loop: asyncio.AbstractEventLoop,
        outcome: str | None = None,
    ) -> None:
        """Count and answer one failed frame; `outcome` when the cause was not `error` itself
        (a runtime's own exception, answered as "internal error", counts as runtime_error)."""
        if isinstance(error, Overloaded):
            model.record_failure(loop.time() - pick.waiting.arrival, "overloaded")
            pick.session.deliver_overloaded(pick.waiting, error, model)
        else:
            failed_as = outcome if outcome is not None else outcome_of(error)
            model.record_failure(loop.time() - pick.waiting.arrival, failed_as)
            pick.session.deliver_error(pick.waiting.frame.sequence, error)
