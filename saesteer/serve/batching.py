"""One worker thread owns the model; requests wait in a queue and run together in micro-batches.

The worker takes the oldest waiting request and every other waiting request that can share
its `generate` call: the same steering (spec hash) and the same sampling settings. Each row
keeps its own `max_tokens` (a per-row stop), rows leave the batch as they finish, and a row
whose client went away is stopped at the next token. Tokens go back to each request's own
asyncio queue as they are made, so streaming needs no second path. Requests that arrive while
a batch runs wait for the next one (micro-batching, not continuous batching: see
docs/serving.md for the measured trade-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.generate import GenerationConfig, generate
from saesteer.models import ChatModel, Conversation
from saesteer.steer import Steering

log = logging.getLogger("saesteer.serve")


class QueueFull(Exception):
    """More requests wait than the server accepts (HTTP 429)."""


class ShuttingDown(Exception):
    """The worker has stopped (HTTP 503)."""


@dataclass(frozen=True)
class Sampling:
    """Settings that every row of one `generate` call shares."""

    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """With temperature > 0, a request with a seed runs alone so that its sample is reproducible."""


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One chat request: `n` rows (choices) of the same conversation."""

    conversation: Conversation
    max_tokens: int
    sampling: Sampling
    steering: Steering | None
    loop: asyncio.AbstractEventLoop
    n: int = 1
    stream: bool = False
    n_prompt_tokens: int = 0
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """("delta", choice, text), ("done", choice, Finished) or ("error", status, message)."""
    cancelled: bool = False
    number: int = field(default_factory=lambda: next(_ids))

    @property
    def key(self) -> tuple:
        lone = self.sampling.seed is not None and self.sampling.temperature > 0
        return (self.steering.hash if self.steering is not None else None, self.sampling,
                self.number if lone else None)

    def push(self, event: tuple) -> None:
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's event loop is gone: nobody is listening
            self.cancelled = True


@dataclass
class Finished:
    """The end of one choice."""

    text: str
    token_ids: list[int]
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: str
    """stop or length (OpenAI's names)."""
    steered: bool
    """Whether steering acted on this row (False when a condition decided against it)."""
    detector_score: float | None = None


@dataclass(eq=False)
class Call:
    """Any other work on the model (teacher-forced activations), run alone by the worker."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: bool = False


@dataclass
class Stats:
    requests: int = 0
    rows: int = 0
    batches: int = 0
    tokens: int = 0
    errors: int = 0
    cancelled: int = 0
    """Requests dropped from the queue plus rows stopped mid-generation, because their client left."""
    max_batch_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["mean_batch_rows"] = round(self.rows / self.batches, 2) if self.batches else 0.0
        return out


class Batcher:
    """The model's only user: a queue of requests and the thread that serves them."""

    def __init__(self, lm: ChatModel, *, max_queue: int = 64, max_batch_size: int = 16,
                 batch_wait_s: float = 0.0):
        self.lm = lm
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.stats = Stats()
        self.running_rows = 0
        self._waiting: deque[Job | Call] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- the request side (event loop) --------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="saesteer-model", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for item in pending:
            _fail(item, 503, "the server is shutting down")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job | Call) -> None:
        with self._cond:
            if self._stopping or self._thread is None:
                raise ShuttingDown()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            self._waiting.append(job)
            self._cond.notify()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the model thread and wait for its result."""
        loop = asyncio.get_running_loop()
        item = Call(fn, loop, loop.create_future())
        self.submit(item)
        try:
            return await item.future
        finally:
            item.cancelled = True

    def cancel(self, job: Job | Call) -> None:
        """The client went away: drop the request from the queue, or stop its rows at the next token."""
        job.cancelled = True
        with self._cond, contextlib.suppress(ValueError):
            self._waiting.remove(job)
            self.stats.cancelled += 1

    # --- the model side (worker thread) -------------------------------------------------------

    def _next_group(self) -> list[Job] | Call | None:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._waiting.popleft()
        if isinstance(first, Call):
            return first
        if self.batch_wait_s > 0 and not self._waiting:
            time.sleep(self.batch_wait_s)  # let a burst of requests gather
        group, rows = [first], first.n
        with self._cond:
            for item in list(self._waiting):
                if rows >= self.max_batch_size:
                    break
                if isinstance(item, Job) and item.key == first.key and rows + item.n <= self.max_batch_size:
                    self._waiting.remove(item)
                    group.append(item)
                    rows += item.n
        return group

    def _run(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            if isinstance(group, Call):
                self._run_call(group)
                continue
            group = [job for job in group if not job.cancelled]
            if group:
                try:
                    self._run_group(group)
                except Exception as e:  # a bug must not take the worker down with it
                    self.stats.errors += 1
                    log.error("batch failed: %s", traceback.format_exc())
                    for job in group:
                        _fail(job, 500, f"generation failed: {type(e).__name__}: {e}")

    def _run_call(self, call: Call) -> None:
        if call.cancelled:
            return
        try:
            result, error = call.fn(), None
        except Exception as e:  # delivered to the awaiting request
            result, error = None, e

        def deliver() -> None:
            if call.future.done():
                return
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(result)

        with contextlib.suppress(RuntimeError):
            call.loop.call_soon_threadsafe(deliver)

    def _run_group(self, group: list[Job]) -> None:
        owners = [(job, choice) for job in group for choice in range(job.n)]
        limits = [job.max_tokens for job, _ in owners]
        tokens: list[list[int]] = [[] for _ in owners]
        texts = [""] * len(owners)
        emitted = [""] * len(owners)
        delivered = [False] * len(owners)
        first = group[0]
        sampling = first.sampling
        holdback = max((len(s) for s in sampling.stop), default=1) - 1
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)
        config = GenerationConfig(max_new_tokens=max(limits), temperature=sampling.temperature,
                                  top_p=sampling.top_p, stop_strings=sampling.stop,
                                  batch_size=len(owners), seed=seed)
        steering = first.steering
        gate = steering.gate if steering is not None else None
        self.running_rows = len(owners)
        self.stats.batches += 1
        self.stats.requests += len(group)
        self.stats.rows += len(owners)
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(owners))

        def on_token(row: int, token: int, text: str) -> None:
            tokens[row].append(token)
            texts[row] = text
            job, choice = owners[row]
            if not job.stream or job.cancelled:
                return
            # Never send a stop string, nor a partial UTF-8 character or the start of a stop string.
            hits = [text.find(s) for s in sampling.stop if s in text]
            if hits:
                safe = text[:min(hits)]
            else:
                safe = text.rstrip("\ufffd")
                safe = safe[:len(safe) - holdback] if holdback else safe
            if len(safe) > len(emitted[row]) and safe.startswith(emitted[row]):
                job.push(("delta", choice, safe[len(emitted[row]):]))
                emitted[row] = safe

        def should_stop(row: int, _text: str) -> bool:
            return owners[row][0].cancelled or len(tokens[row]) >= limits[row]

        def on_finish(row: int, reason: str) -> None:
            # Deliver each row as soon as it leaves the batch, not when the whole batch ends.
            delivered[row] = True
            self.stats.tokens += len(tokens[row])
            job, choice = owners[row]
            if job.cancelled:
                with self._cond:
                    self.stats.cancelled += 1
                return
            text = texts[row]
            if reason == "stop_string":
                text = text[:min(text.find(s) for s in sampling.stop if s in text)]
            if job.stream and text.startswith(emitted[row]) and len(text) > len(emitted[row]):
                job.push(("delta", choice, text[len(emitted[row]):]))
            steered = steering is not None and (gate is None or gate.decisions.get(row, False))
            score = gate.scores.get(row) if gate is not None else None
            job.push(("done", choice, Finished(text, tokens[row], job.n_prompt_tokens, len(tokens[row]),
                                               "stop" if reason in ("stop", "stop_string") else "length",
                                               steered, score)))

        if gate is not None:
            gate.decisions.clear()
            gate.scores.clear()
        try:
            with steering.active() if steering is not None else contextlib.nullcontext():
                generate(self.lm, [job.conversation for job, _ in owners], config,
                         should_stop=should_stop, on_token=on_token, on_finish=on_finish)
        except SaesteerError as e:
            for job in group:
                _fail(job, 422, str(e))
            return
        finally:
            self.running_rows = 0
        for row in range(len(owners)):
            if not delivered[row]:  # pragma: no cover - generate reports every row it ends
                on_finish(row, "length")


def _fail(item: Job | Call, status: int, message: str) -> None:
    if isinstance(item, Job):
        item.push(("error", status, message))
        return

    def deliver() -> None:
        if not item.future.done():
            item.future.set_exception(ShuttingDown(message))

    with contextlib.suppress(RuntimeError):
        item.loop.call_soon_threadsafe(deliver)
