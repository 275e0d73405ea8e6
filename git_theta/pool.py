"""A small thread pool for the filters' encoding and decoding.

git starts a filter process for every command that reads or writes a tracked file, so what
the filters import is paid at every ``git add`` and checkout: ``concurrent.futures`` costs
8-10 ms of imports (it loads ``logging``), several times what this pool costs. It does what
the filters need of an executor and no more: ``submit`` a call, get its ``result`` (its
exception raised again) or ``cancel`` it while it waits, ``map`` as an executor's, and on
leaving the ``with`` block (``shutdown``) run what was submitted and wait for it. A thread
starts with each call until the pool has its size. Commands that run once (fsck, diff,
squash) keep ``concurrent.futures``.
"""

from __future__ import annotations

import threading
from _queue import SimpleQueue  # queue's C core: the rest of queue costs 1 ms to import
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Cancelled(Exception):
    """The result of a call cancelled before it started."""


class Task(Generic[T]):
    """One submitted call: its result once it has run."""

    __slots__ = ("_call", "_finished", "_result", "_error", "_state")

    def __init__(self, call: Callable[[], T]) -> None:
        self._call: Callable[[], T] | None = call
        self._finished = threading.Lock()
        self._finished.acquire()  # released when the call has run (or was cancelled)
        self._result: T | None = None
        self._error: BaseException | None = None
        self._state = "waiting"  # then "running" or "cancelled" (the pool's lock guards it)

    def result(self) -> T:
        """The call's return value, waiting for it; raises what the call raised, or
        Cancelled."""
        with self._finished:  # a Lock's ``with`` is C code: nothing lands in between
            pass
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set by _run when no error

    def _run(self) -> None:
        call, self._call = self._call, None  # nothing the call holds outlives it here
        try:
            self._result = call()  # type: ignore[misc]  # set until it runs
        except BaseException as exc:  # given to whoever asks for the result
            self._error = exc
        finally:
            self._finished.release()


class Pool:
    """Up to ``threads`` threads running submitted calls in the order they came.

    Ctrl-C reaches the thread that submits (the main one) at any point of its code, so that
    side takes only plain locks, in ``with`` blocks: a Lock's ``__enter__`` is C code, so no
    KeyboardInterrupt comes between taking one and the block that gives it back (a
    Condition's is Python code: an interrupt there left it held and the threads stuck).
    Leaving the ``with`` block on a KeyboardInterrupt takes back the calls that have not
    started and does not wait for the running ones (their threads are daemons): the command
    is ending, and a thread that was starting when the interrupt came may never run. An
    object being stored then leaves its temporary file, which `git theta gc` removes."""

    def __init__(self, threads: int, name: str = "theta") -> None:
        self.size = max(1, threads)
        self.name = name
        self._lock = threading.Lock()  # guards the tasks' states and the closed flag
        self._queue: SimpleQueue[Task[Any] | None] = SimpleQueue()  # None: a thread stops
        self._pending: set[Task[Any]] = set()  # submitted, not started
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Task[T]:
        """Runs ``fn(*args, **kwargs)`` on a thread of the pool; its Task."""
        task: Task[T] = Task(lambda: fn(*args, **kwargs))
        with self._lock:  # several threads submit to the codec's pool at once
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._pending.add(task)
            self._queue.put(task)
            if len(self._threads) < self.size:  # one thread per call until there are enough
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return task

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> Iterator[T]:
        """``fn`` of each item, all submitted now; the results in the items' order. Those not
        started are cancelled when the results are not all taken (one raised, or the
        caller stopped)."""
        tasks = [self.submit(fn, item) for item in items]

        def results() -> Iterator[T]:
            try:
                for task in tasks:
                    yield task.result()
            finally:
                for task in tasks:
                    self.cancel(task)

        return results()

    def cancel(self, task: Task[Any]) -> bool:
        """Takes ``task`` back if it has not started (its result then raises Cancelled);
        whether it did."""
        with self._lock:
            if task._state != "waiting":
                return task._state == "cancelled"
            task._state = "cancelled"
            self._pending.discard(task)
            task._call = None
            task._error = Cancelled()
            task._finished.release()
        return True

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._lock:
                if task._state != "waiting":
                    continue  # cancelled
                task._state = "running"
                self._pending.discard(task)
            task._run()

    def shutdown(self, wait: bool = True) -> None:
        """No more calls; the threads stop once they have run what was submitted (``wait``:
        this waits for that)."""
        with self._lock:  # no call is queued after the stops
            self._closed = True
            threads = list(self._threads)
            for _ in threads:  # a stop for each thread
                self._queue.put(None)
        if wait:
            for thread in threads:
                if thread.ident is not None and thread is not threading.current_thread():
                    thread.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None and not issubclass(kind, Exception):  # Ctrl-C, exit: not waiting
            for task in list(self._pending):
                self.cancel(task)
            self.shutdown(wait=False)
        else:
            self.shutdown()
