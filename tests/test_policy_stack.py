"""`PolicyLearner`: replay mixed into the one step, drift actions, alerts, surprise scores."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar, Self

import pytest

from livelm.document import Document
from livelm.learner import EncodedDocument, Learner, StepReport, get_strategy
from livelm.model import LoadedModel
from livelm.policy import DetectorConfig, DriftEvent, PolicyConfig, PolicyLearner, Span

FAST = {"precision": "fp32", "warmup_steps": 4, "max_docs_per_step": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


class SpyLearner(Learner):
    """Records what each step was given."""

    calls: list[tuple[list[str], list[str], list[float]]]

    def step(
        self,
        docs: Sequence[EncodedDocument],
        *,
        extra: Sequence[EncodedDocument] = (),
        extra_weights: Sequence[float] | None = None,
    ) -> StepReport:
        self.calls.append(
            ([d.doc.id for d in docs], [d.doc.id for d in extra], list(extra_weights or []))
        )
        return super().step(docs, extra=extra, extra_weights=extra_weights)


def spy(lm: LoadedModel, name: str = "online") -> SpyLearner:
    learner = SpyLearner(copy.deepcopy(lm.model), lm.tokenizer, get_strategy(name).replace(**FAST))
    learner.calls = []
    return learner


def stream(n: int) -> list[Document]:
    return [
        Document(f"Report number {i} on the weather and the markets.", id=f"d{i}", time=None)
        for i in range(n)
    ]


def feed(stepper: PolicyLearner, docs: list[Document], size: int = 2) -> list[StepReport]:
    encoded = [stepper.encode(d) for d in docs]
    return [stepper.step(encoded[i : i + size]) for i in range(0, len(encoded), size)]


class FiresAt:
    """A detector stub that fires on its n-th update, to test what a drift does."""

    name = "stub"

    def __init__(self, at: int) -> None:
        self.at, self.seen, self.drift_detected = at, 0, False

    def update(self, x: float) -> Self:
        self.seen += 1
        self.drift_detected = self.seen == self.at
        return self

    def reset(self) -> None:
        self.seen = 0

    def state(self) -> dict[str, float]:
        return {"seen": float(self.seen)}

    @property
    def false_alarm_rate(self) -> float:
        return 0.0


def with_stub(stepper: PolicyLearner, at: int) -> PolicyLearner:
    stepper.detector = FiresAt(at)
    return stepper


def test_replayed_documents_are_learned_from_never_scored(tiny: LoadedModel) -> None:
    learner = spy(tiny)
    stepper = PolicyLearner(learner, PolicyConfig(replay=1.0, replay_size=100))
    reports = feed(stepper, stream(12))
    seen: set[str] = set()
    for (fresh, extra, weights), report in zip(learner.calls, reports, strict=True):
        assert [s.id for s in report.scores] == fresh  # only the new documents are scored
        assert set(extra) <= seen  # replayed ones come from the past, never from this step
        assert len(extra) == min(2, len(seen)) and weights == [1.0] * len(extra)
        seen |= set(fresh)
    assert learner.calls[0][1] == []
    assert stepper.replayed == sum(len(c[1]) for c in learner.calls) == 10
    assert stepper.docs_seen == 12


def test_documents_without_a_finite_loss_are_not_kept_for_replay(tiny: LoadedModel) -> None:
    stepper = PolicyLearner(spy(tiny), PolicyConfig(replay=1.0))
    empty = Document("", id="empty")
    report = feed(stepper, [empty, *stream(3)], size=4)[0]
    assert report.scores[0].tokens == 0
    assert stepper.memory is not None and sorted(x.doc.doc.id for x in stepper.memory) == [
        "d0",
        "d1",
        "d2",
    ]


def test_a_window_and_a_half_life_shape_what_is_replayed(tiny: LoadedModel) -> None:
    learner = spy(tiny)
    policy = PolicyConfig(replay=1.0, window=Span(4), half_life=Span(2))
    stepper = PolicyLearner(learner, policy)
    feed(stepper, stream(16))
    for step, (fresh, extra, weights) in enumerate(learner.calls):
        first_new = int(fresh[0][1:])
        assert first_new == 2 * step
        for doc_id, weight in zip(extra, weights, strict=True):
            age = first_new - int(doc_id[1:])
            assert 1 <= age <= 4  # only the last 4 documents
            assert weight == pytest.approx(0.5 ** (age / 2))


def test_a_fractional_share_averages_out(tiny: LoadedModel) -> None:
    replayed = 0
    for seed in range(3):
        stepper = PolicyLearner(spy(tiny), PolicyConfig(replay=0.25, seed=seed))
        feed(stepper, stream(40), size=1)
        replayed += stepper.replayed
    assert 15 <= replayed <= 45  # 0.25 a step, for the 3 x 39 steps that had a past to replay


def test_a_drift_runs_its_actions_and_shows_in_the_learner(tiny: LoadedModel) -> None:
    learner = spy(tiny)
    received: list[DriftEvent] = []
    policy = PolicyConfig(
        detector=DetectorConfig("adwin"),
        on_drift=("rewarm", "reset", "boost"),
        boost=2.0,
        boost_steps=3,
    )
    stepper = with_stub(PolicyLearner(learner, policy, on_drift=received.append), at=7)
    docs = stream(20)
    feed(stepper, docs[:8])  # the 7th document (index 6) trips the stub
    assert [e.index for e in stepper.drift_events] == [6]
    event = stepper.drift_events[0]
    assert received == [event]
    assert event.doc_id == "d6" and event.step == 4 and event.detector == "adwin"
    assert event.actions == ("rewarm", "reset", "boost") and event.state == {"seen": 7.0}
    assert learner.rewarms == 1 and learner.optimizer_resets == 1
    assert learner.current_lr() == pytest.approx(learner.config.lr / 4)  # warm-up restarted
    assert stepper.boost_left == 3
    replays_before = len(learner.calls)
    feed(stepper, docs[8:16])
    boosted = [len(extra) for _, extra, _ in learner.calls[replays_before:]]
    assert boosted == [4, 4, 4, 0]  # boost=2.0 replayed per new document, for 3 steps
    assert json.loads(json.dumps(event.to_dict()))["index"] == 6


class _Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Hook.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.bodies = []
    yield f"http://127.0.0.1:{server.server_port}/alerts?token=secret"
    server.shutdown()
    server.server_close()


def test_a_drift_is_posted_to_the_webhook(tiny: LoadedModel, webhook: str) -> None:
    policy = PolicyConfig(detector=DetectorConfig("kswin"), webhook=webhook)
    stepper = with_stub(PolicyLearner(spy(tiny), policy), at=3)
    feed(stepper, stream(4))
    assert _Hook.bodies == [stepper.drift_events[0].to_dict()]
    assert stepper.webhook_failures == 0
    assert policy.to_dict()["webhook"].endswith("/...") and "secret" not in str(policy.to_dict())


def test_an_unreachable_webhook_is_counted_not_raised(tiny: LoadedModel) -> None:
    dead = "http://127.0.0.1:9/alerts"  # the discard port: nothing listens there
    policy = PolicyConfig(detector=DetectorConfig("adwin"), webhook=dead, webhook_timeout=2.0)
    stepper = with_stub(PolicyLearner(spy(tiny), policy), at=2)
    feed(stepper, stream(4))
    assert len(stepper.drift_events) == 1 and stepper.webhook_failures == 1


def test_every_document_gets_a_surprise_after_the_warmup(
    tiny: LoadedModel, news_lines: list[str]
) -> None:
    stepper = PolicyLearner(spy(tiny, "static"), PolicyConfig(detector=DetectorConfig("adwin")))
    texts = news_lines * 4
    reports = feed(stepper, [Document(t) for t in texts], size=4)
    surprises = [s.surprise for r in reports for s in r.scores]
    warmup = stepper.monitor.warmup
    assert surprises[:warmup] == [None] * warmup
    assert all(isinstance(z, float) for z in surprises[warmup:])
    (odd,) = stepper.score([stepper.encode(Document("zzzz qqqq xxxx 0000 !!!! ~~~~ ^^^^"))])
    monitor = stepper.monitor
    assert odd.surprise == pytest.approx((odd.loss - monitor.mean) / monitor.var**0.5)
    assert monitor.n == len(texts)  # scoring alone changes no statistics


def test_a_static_learner_takes_a_detector_but_nothing_that_learns(tiny: LoadedModel) -> None:
    static = spy(tiny, "static")
    PolicyLearner(static, PolicyConfig(detector=DetectorConfig("adwin")))
    for policy in (
        PolicyConfig(replay=0.5),
        PolicyConfig(detector=DetectorConfig("adwin"), on_drift=("reset",)),
    ):
        with pytest.raises(ValueError, match="learns nothing"):
            PolicyLearner(static, policy)


def test_bad_policies_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--window shapes replay"):
        PolicyConfig(window=Span(10))
    with pytest.raises(ValueError, match="--on-drift acts on drifts"):
        PolicyConfig(on_drift=("rewarm",))
    with pytest.raises(ValueError, match="--webhook must be an http"):
        PolicyConfig(detector=DetectorConfig("adwin"), webhook="file:///etc/passwd")
    with pytest.raises(ValueError, match="--replay must be"):
        PolicyConfig(replay=-1.0)
    with pytest.raises(ValueError, match="--on-drift"):
        PolicyConfig(detector=DetectorConfig("adwin"), on_drift=("rewarm", "rewarm"))
