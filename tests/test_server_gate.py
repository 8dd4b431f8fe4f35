"""Serving before learning: the learner's turn waits for requests, but never forever, and under
a steady load it still gets its share of the time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from livelm.server import create_app
from livelm.server.gate import PriorityGate
from tests.server_util import request_held, running, tiny_settings, wait_for


def test_the_learner_waits_while_requests_run_and_for_a_quiet_moment() -> None:
    gate = PriorityGate(max_inflight=2, quiet_s=0.05, max_wait_s=5.0)
    with request_held(gate) as release:
        assert gate.active == 1
        threading.Timer(0.2, release.set).start()
        turn = gate.wait_turn()
    assert turn.waited >= 0.2 + 0.05 - 0.01  # the request, then the quiet window
    assert turn.reason == "quiet"  # without a share, only a quiet moment (or the deadline)


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
    assert turn.reason == "deadline" and 0.3 <= turn.waited < 1.0


def test_an_idle_gate_gives_the_turn_at_once_and_close_releases_a_waiter() -> None:
    gate = PriorityGate(max_inflight=1, quiet_s=0.05, max_wait_s=60)
    turn = gate.wait_turn()
    assert turn.waited < 0.05 and turn.reason == "quiet"
    with gate.serving():
        threading.Timer(0.1, gate.close).start()
        assert gate.wait_turn().waited < 5


def _steady_load(gate: PriorityGate, stop: threading.Event, request_s: float) -> None:
    """One client back to back: the next request starts as the last one ends."""
    while not stop.is_set():
        with gate.serving():
            time.sleep(request_s)


def _learn_under_load(share: float, seconds: float, step_s: float) -> tuple[float, list[str]]:
    """A learner taking `step_s` turns for `seconds` beside a back-to-back client: the share of
    the wall time its turns took, and why each turn was given."""
    gate = PriorityGate(max_inflight=1, quiet_s=0.05, max_wait_s=5.0, share=share)
    stop = threading.Event()
    load = threading.Thread(target=_steady_load, args=(gate, stop, 0.01))
    load.start()
    reasons: list[str] = []
    try:
        time.sleep(0.05)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            reasons.append(gate.wait_turn().reason)
            time.sleep(step_s)  # the step: it cannot be interrupted
            gate.end_turn()
        wall = time.monotonic() - started
    finally:
        stop.set()
        load.join()
    return gate.overlapped_seconds / wall, reasons


def test_under_a_back_to_back_load_the_learner_gets_its_share_of_the_time() -> None:
    for share in (0.5, 0.2):
        taken, reasons = _learn_under_load(share, seconds=2.0, step_s=0.05)
        assert abs(taken - share) < 0.1, (share, taken)
        # Every turn came from the share: none in a quiet moment, none forced by the deadline.
        assert set(reasons) == {"share"}, reasons
        expected = 2.0 * share / 0.05
        assert 0.6 * expected <= len(reasons) <= 1.4 * expected + 1


def test_without_a_share_the_same_load_starves_the_learner_until_the_deadline() -> None:
    gate = PriorityGate(max_inflight=1, quiet_s=0.05, max_wait_s=0.5, share=0.0)
    stop = threading.Event()
    load = threading.Thread(target=_steady_load, args=(gate, stop, 0.01))
    load.start()
    try:
        time.sleep(0.05)
        turn = gate.wait_turn()
    finally:
        stop.set()
        load.join()
    assert turn.reason == "deadline" and turn.waited >= 0.5


def test_a_turn_that_met_a_request_is_paid_back_and_a_quiet_one_costs_nothing() -> None:
    gate = PriorityGate(max_inflight=2, quiet_s=0.05, max_wait_s=30.0, share=0.25)
    assert gate.wait_turn().reason == "quiet"
    time.sleep(0.1)
    gate.end_turn()
    assert gate.debt == 0.0 and gate.overlapped_seconds == 0.0

    with request_held(gate):
        turn = gate.wait_turn()  # owes nothing: goes beside the request at once
        assert turn.reason == "share" and turn.waited < 0.05
        time.sleep(0.2)
        gate.end_turn()
        assert 0.15 <= gate.debt <= 0.75 * 0.2 + 0.01  # (1 - share) of the turn
        # Under load it waits until the debt is paid back at `share` per second: 0.6 s.
        turn = gate.wait_turn()
        gate.end_turn()
    assert turn.reason == "share" and 0.5 <= turn.waited < 1.0


def test_a_publish_follows_its_step_at_once_and_the_learner_pays_for_both_after() -> None:
    gate = PriorityGate(max_inflight=1, quiet_s=0.05, max_wait_s=30.0, share=0.5)
    with request_held(gate):
        turns = []
        # A step, its publish, the next step.
        for seconds, follow_on in ((0.2, False), (0.2, True), (0.0, False)):
            turns.append(gate.wait_turn(follow_on=follow_on))
            time.sleep(seconds)
            gate.end_turn()
    assert [t.reason for t in turns] == ["share", "follow-on", "share"]
    # The publish went at once; then the learner owed (1 - 0.5) * 0.4 s, paid back in 0.4 s.
    assert turns[1].waited < 0.05 and 0.35 <= turns[2].waited < 0.6, turns


def _learned_beside_a_scoring_client(
    model_dir: Path, data_dir: Path, share: float, within_s: float
) -> int:
    """Documents a server learned within `within_s` of their POST while one client scored back to
    back. Gaps between its requests never count as quiet (`yield_quiet_s` 2 s) and the deadline
    is a minute away: only the share lets the learner in."""
    settings = tiny_settings(
        model_dir, data_dir, learner_share=share, yield_quiet_s=2.0, yield_max_s=60.0
    )
    stop = threading.Event()
    scored = []

    def scoring(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                r = client.post("/v1/score", json={"text": "The river floods the town."})
                scored.append(r.status_code)

    with running(create_app(settings)) as url:
        scorer = threading.Thread(target=scoring, args=(url,))
        scorer.start()
        try:
            wait_for(lambda: len(scored) >= 5)
            docs = [{"id": f"d{i}", "text": f"Day {i}: the council voted."} for i in range(6)]
            httpx.post(f"{url}/v1/documents", json=docs, timeout=60).raise_for_status()
            time.sleep(within_s)
            states = [
                httpx.get(f"{url}/v1/documents/{d['id']}", timeout=60).json()["state"] for d in docs
            ]
        finally:
            stop.set()
            scorer.join()
    assert scored and set(scored) == {200}
    return states.count("learned")


def test_a_server_scored_back_to_back_still_learns_with_a_share(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert _learned_beside_a_scoring_client(tiny_model_dir, tmp_path / "a", 0.5, 3.0) == 6
    assert _learned_beside_a_scoring_client(tiny_model_dir, tmp_path / "b", 0.0, 3.0) == 0
