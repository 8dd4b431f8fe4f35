"""Serving before learning: the learner's turn waits for requests, but never forever."""

from __future__ import annotations

import threading
import time

from livelm.server.gate import PriorityGate


def test_the_learner_waits_while_requests_run_and_for_a_quiet_moment() -> None:
    gate = PriorityGate(max_inflight=2, quiet_s=0.05, max_wait_s=5.0)
    released = threading.Event()

    def request() -> None:
        with gate.serving():
            released.wait()

    worker = threading.Thread(target=request)
    worker.start()
    time.sleep(0.02)
    assert gate.active == 1
    threading.Timer(0.2, released.set).start()
    turn = gate.wait_turn()
    worker.join()
    assert turn.waited >= 0.2 + 0.05 - 0.01  # the request, then the quiet window
    assert turn.contended  # a request ran just before: more may come


def test_under_a_steady_load_the_learner_gets_a_forced_turn() -> None:
    gate = PriorityGate(max_inflight=1, quiet_s=0.05, max_wait_s=0.3)
    stop = threading.Event()

    def steady_load() -> None:
        while not stop.is_set():
            with gate.serving():
                time.sleep(0.01)

    load = threading.Thread(target=steady_load)
    load.start()
    try:
        turn = gate.wait_turn()
    finally:
        stop.set()
        load.join()
    assert turn.contended and 0.3 <= turn.waited < 1.0


def test_an_idle_gate_gives_the_turn_at_once_and_close_releases_a_waiter() -> None:
    gate = PriorityGate(max_inflight=1, quiet_s=0.05, max_wait_s=60)
    turn = gate.wait_turn()
    assert turn.waited < 0.05 and not turn.contended
    with gate.serving():
        threading.Timer(0.1, gate.close).start()
        assert gate.wait_turn().waited < 5
