"""Concurrent calls to one in-process engine, merged into shared model calls.

Solves run in threads and share one engine object per URI. Each call hands its rows to the engine's
`Batcher`; rows of calls that arrive within a short window, and that may ride together (the same
key: sampling parameters, or for some verifiers the question), go to the model as one call, and each
caller gets back its own results in its own order.

There is no background thread. The first caller to find the model idle leads: it waits until the
window after the oldest waiting call has passed (or until `max_rows` rows are waiting), takes the
calls that fit, runs them, hands out the results and wakes the others; one of them leads next. The
model runs one merged call at a time.

Errors stay with their calls: when a merged model call raises, each call's rows run again on their
own, so only the faulty call fails. A caller waits at most `timeout` seconds without the batcher
finishing a model call, then fails with `BatchTimeout`; a leader that stops (an interrupt) fails the
calls it had taken, so no caller waits on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ttc_nodes.engines.base import EngineError

log = logging.getLogger(__name__)

K = TypeVar("K")  # what the rows of one model call share
R = TypeVar("R")  # a row
V = TypeVar("V")  # the result of a row
T = TypeVar("T")

WINDOW_MS = "TTC_BATCH_WINDOW_MS"  # how long a lone call waits for company, in milliseconds
TIMEOUT_S = "TTC_BATCH_TIMEOUT_S"  # how long a call waits while no model call finishes, in seconds
DEFAULT_WINDOW_MS = 3.0
DEFAULT_TIMEOUT_S = 600.0


class BatchTimeout(EngineError):
    """A call waited for its batch while no model call of its engine finished in time."""


class BatchAborted(EngineError):
    """The thread running a merged model call stopped before the call's results came back."""


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in consecutive slices of at most `size`."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


@dataclass(eq=False)
class _Call(Generic[K, R, V]):
    key: K
    rows: list[R]
    arrived: float = field(default_factory=time.monotonic)
    results: list[V] | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.results is not None or self.error is not None


class Batcher(Generic[K, R, V]):
    """Merges the rows of concurrent `submit` calls with equal keys into calls of `run`.

    `run(key, batches)` is the model: it returns one result per row of `batches` (each at most
    `max_rows` rows; None: no limit), in order. `window` and `timeout` are in seconds; by default
    they come from TTC_BATCH_WINDOW_MS (3 ms) and TTC_BATCH_TIMEOUT_S (600 s).
    """

    def __init__(
        self,
        run: Callable[[K, list[list[R]]], list[V]],
        *,
        max_rows: int | None,
        name: str,
        window: float | None = None,
        timeout: float | None = None,
    ) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        self._run = run
        self.max_rows = max_rows
        self.name = name
        self.window = _setting(WINDOW_MS, DEFAULT_WINDOW_MS) / 1000 if window is None else window
        self.timeout = _setting(TIMEOUT_S, DEFAULT_TIMEOUT_S) if timeout is None else timeout
        self._ready = threading.Condition()
        self._pending: list[_Call[K, R, V]] = []
        self._busy = False  # a leader is collecting or running a batch
        self._finished = 0  # model calls finished: what a waiting caller counts as progress

    def submit(self, key: K, rows: Sequence[R]) -> list[V]:
        """The results of `rows`, in order, from model calls shared with concurrent callers whose key
        equals `key`. Raises what the model raised on these rows alone, or BatchTimeout."""
        call: _Call[K, R, V] = _Call(key, list(rows))
        if not call.rows:
            return []
        with self._ready:
            self._pending.append(call)
            self._ready.notify_all()  # a leader collecting may now have a full batch
            batch = self._await_turn(call)
        while batch is not None:
            try:
                self._execute(batch)
            finally:
                with self._ready:
                    for taken in batch:
                        if not taken.done:  # only an interrupt of this thread leaves a call open
                            taken.error = BatchAborted(f"{self.name}: the thread running this call's batch stopped")
                    self._busy = False
                    self._finished += 1
                    self._ready.notify_all()
            with self._ready:
                batch = self._await_turn(call)
        if call.error is not None:
            raise call.error
        assert call.results is not None
        return call.results

    def _await_turn(self, call: _Call[K, R, V]) -> list[_Call[K, R, V]] | None:
        """Wait (holding the lock) until `call` is done (None) or this thread is to lead (the batch)."""
        seen, since = self._finished, time.monotonic()
        while not call.done:
            if not self._busy:
                return self._collect()  # `call` is still pending, so there is a batch to take
            if self._finished != seen:
                seen, since = self._finished, time.monotonic()
            left = since + self.timeout - time.monotonic()
            if left <= 0:
                if call in self._pending:
                    self._pending.remove(call)
                raise BatchTimeout(
                    f"{self.name}: no model call finished in {self.timeout:g} s while this call waited for its "
                    f"batch (the call in progress may hang; {TIMEOUT_S} sets the limit)"
                )
            self._ready.wait(left)
        return None

    def _collect(self) -> list[_Call[K, R, V]]:
        """Become the leader and take a batch: the oldest call, and the calls with its key that fit
        in `max_rows` beside it, once the window after its arrival has passed or the rows fill it."""
        self._busy = True
        try:
            oldest = self._pending[0]
            close = oldest.arrived + self.window
            while oldest in self._pending and (left := close - time.monotonic()) > 0:
                if self.max_rows is not None and self._rows_with(oldest.key) >= self.max_rows:
                    break
                self._ready.wait(left)
            key = self._pending[0].key  # the leader's own call is still pending, so there is one
            batch: list[_Call[K, R, V]] = []
            rows = 0
            for waiting in self._pending:
                fits = not batch or self.max_rows is None or rows + len(waiting.rows) <= self.max_rows
                if waiting.key == key and fits:
                    batch.append(waiting)
                    rows += len(waiting.rows)
            self._pending = [waiting for waiting in self._pending if waiting not in batch]
            return batch
        except BaseException:
            self._busy = False
            self._ready.notify_all()
            raise

    def _rows_with(self, key: K) -> int:
        return sum(len(waiting.rows) for waiting in self._pending if waiting.key == key)

    def _execute(self, batch: list[_Call[K, R, V]]) -> None:
        """Run the batch's rows as one model call and give each call its results; if that raises, run
        each call on its own so that the error reaches only the calls it belongs to."""
        key = batch[0].key
        try:
            results = self._rows(key, [row for call in batch for row in call.rows])
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                return
            log.info(
                "%s: a merged call of %d callers failed (%s); running each on its own", self.name, len(batch), error
            )
            for call in batch:
                try:
                    call.results = self._rows(key, call.rows)
                except Exception as own:
                    call.error = own
            return
        start = 0
        for call in batch:
            call.results = results[start : start + len(call.rows)]
            start += len(call.rows)

    def _rows(self, key: K, rows: list[R]) -> list[V]:
        results = self._run(key, chunks(rows, self.max_rows or len(rows)))
        if len(results) != len(rows):
            raise EngineError(f"{self.name}: the model returned {len(results)} results for {len(rows)} rows")
        return results


_making = threading.Lock()


def shared_batcher(owner: Any, make: Callable[[], Batcher[Any, Any, Any]]) -> Batcher[Any, Any, Any]:
    """The batcher of the engine object `owner`, made by `make` on first use (once, whichever
    thread asks first): every caller of one engine object shares it."""
    found = owner.__dict__.get("_shared_batcher")
    if found is None:
        with _making:
            found = owner.__dict__.get("_shared_batcher")
            if found is None:
                found = owner.__dict__["_shared_batcher"] = make()
    return found  # type: ignore[no-any-return]
