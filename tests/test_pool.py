"""The filters' thread pool: results, errors, cancelling, shutdown, and its thread bound."""

from __future__ import annotations

import threading

import pytest

from git_theta.pool import Cancelled, Pool

pytestmark = pytest.mark.timeout(60)


def test_results_come_back_in_order_and_errors_are_raised_again() -> None:
    with Pool(3) as pool:
        tasks = [pool.submit(lambda i: i * i, i) for i in range(20)]
        failing = pool.submit(int, "not a number")
        assert [t.result() for t in tasks] == [i * i for i in range(20)]
        with pytest.raises(ValueError, match="invalid literal"):
            failing.result()
        assert pool.submit(int, "ff", base=16).result() == 255


def test_at_most_its_size_run_at_once() -> None:
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5)
        with lock:
            running -= 1

    with Pool(2) as pool:
        tasks = [pool.submit(work) for _ in range(6)]
        threading.Timer(0.2, release.set).start()
        for task in tasks:
            task.result()
        assert most == 2 and len(pool._threads) == 2


def test_a_waiting_call_can_be_cancelled_a_running_one_cannot() -> None:
    started, release = threading.Event(), threading.Event()
    ran = []

    def block() -> str:
        started.set()
        release.wait(5)
        return "done"

    with Pool(1) as pool:
        first = pool.submit(block)
        second = pool.submit(ran.append, "second")
        started.wait(5)
        assert pool.cancel(first) is False
        assert pool.cancel(second) is True and pool.cancel(second) is True
        release.set()
        assert first.result() == "done"
        with pytest.raises(Cancelled):
            second.result()
    assert ran == []


def test_shutdown_runs_what_was_submitted_then_refuses_more() -> None:
    done = []
    pool = Pool(1)
    for i in range(5):
        pool.submit(done.append, i)
    pool.shutdown()
    assert done == [0, 1, 2, 3, 4]
    assert all(not t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(done.append, 5)


def test_map_cancels_what_has_not_started_when_a_result_raises() -> None:
    started = []
    release, gate = threading.Event(), threading.Event()

    def work(i: int) -> int:
        started.append(i)
        if i == 0:
            release.wait(5)
            raise KeyError("first")
        gate.wait(5)  # the ones after it wait until the map has raised
        return i

    with Pool(1) as pool:
        results = pool.map(work, range(10))
        release.set()
        with pytest.raises(KeyError, match="first"):
            next(results)
        gate.set()
    # the next one may have started before the map raised; the other eight never did
    assert started in ([0], [0, 1])
