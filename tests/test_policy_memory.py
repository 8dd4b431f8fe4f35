"""Replay memories and forgetting: the reservoir's uniform sample and bounds, the window's exact
contents, decay weights by age, spans."""

from __future__ import annotations

import itertools
import pickle
import random
from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import chisquare

from livelm.document import Document
from livelm.learner.encoding import EncodedDocument
from livelm.policy import Decay, MemoryItem, Reservoir, SlidingWindow, Span, decay_weight
from livelm.policy.memory import BYTES_PER_TOKEN
from livelm.policy.span import stream_time

DAY = 86400.0


def item(index: int, text: str = "", timestamp: float = 0.0, tokens: int = 4) -> MemoryItem:
    doc = Document(text or f"document {index}", id=f"d{index}")
    return MemoryItem(EncodedDocument(doc, (tuple(range(tokens)),)), index, timestamp)


def test_the_reservoir_holds_a_uniform_sample_of_the_whole_stream() -> None:
    n, size, bins = 20_000, 1_000, 10
    reservoir = Reservoir(max_docs=size, seed=0)
    for i in range(n):
        reservoir.add(item(i))
    held = sorted(x.index for x in reservoir)
    assert len(held) == size and len(set(held)) == size
    counts = [0] * bins
    for i in held:
        counts[i * bins // n] += 1
    # Uniform over the stream's positions: old and new documents alike.
    assert chisquare(counts).pvalue > 0.01, counts


def test_every_document_is_equally_likely_to_be_held() -> None:
    n, size, trials = 50, 5, 2_000
    held = [0] * n
    for seed in range(trials):
        reservoir = Reservoir(max_docs=size, seed=seed)
        for i in range(n):
            reservoir.add(item(i))
        for x in reservoir:
            held[x.index] += 1
    assert chisquare(held).pvalue > 0.01, held


def test_the_reservoir_respects_its_bounds_in_documents_and_bytes() -> None:
    rng = random.Random(0)
    reservoir = Reservoir(max_docs=50, max_bytes=4_000, seed=1)
    too_big = item(-1, "x" * 5_000)
    reservoir.add(too_big)
    assert len(reservoir) == 0
    for i in range(2_000):
        reservoir.add(item(i, "y" * rng.randrange(10, 300)))
        assert len(reservoir) <= 50 and reservoir.nbytes <= 4_000
        assert reservoir.nbytes == sum(x.nbytes for x in reservoir)
    assert reservoir.seen == 2_001
    assert len(reservoir) >= 10  # the byte bound shrank it, it did not empty it
    assert item(0, "abc", tokens=5).nbytes == 3 + BYTES_PER_TOKEN * 5


def test_reservoir_samples_are_distinct_seeded_and_bounded() -> None:
    reservoir = Reservoir(max_docs=20, seed=2)
    for i in range(100):
        reservoir.add(item(i))
    a = reservoir.sample(8, random.Random(3))
    assert len({x.index for x in a}) == 8
    assert [x.index for x in a] == [x.index for x in reservoir.sample(8, random.Random(3))]
    assert len(reservoir.sample(50, random.Random(3))) == 20
    again = pickle.loads(pickle.dumps(reservoir))
    assert sorted(x.index for x in again) == sorted(x.index for x in reservoir)


def test_the_window_holds_exactly_the_last_w_documents() -> None:
    window = SlidingWindow(Span(7))
    for i in range(30):
        window.add(item(i))
        assert [x.index for x in window] == list(range(max(0, i - 6), i + 1))
    assert window.nbytes == sum(x.nbytes for x in window)
    assert {x.index for x in window.sample(100, random.Random(0))} == set(range(23, 30))


def test_a_time_window_holds_what_is_younger_than_the_span() -> None:
    window = SlidingWindow(Span.parse("3d"), max_docs=100)
    for day in range(10):
        for k in range(2):
            window.add(item(10 * day + k, timestamp=day * DAY))
    # The newest is day 9: days 7, 8 and 9 are less than three days older.
    assert sorted(x.index for x in window) == [70, 71, 80, 81, 90, 91]


def test_a_time_window_is_capped_in_documents_and_bytes() -> None:
    window = SlidingWindow(Span.parse("30d"), max_docs=5)
    for i in range(20):
        window.add(item(i, timestamp=0.0))  # a burst with one timestamp
    assert [x.index for x in window] == [15, 16, 17, 18, 19]
    small = SlidingWindow(Span(100), max_bytes=item(0).nbytes * 3)
    for i in range(10):
        small.add(item(i))
    assert [x.index for x in small] == [7, 8, 9]


def test_decay_weights_follow_the_half_life() -> None:
    assert decay_weight(0, 100) == 1.0
    assert decay_weight(100, 100) == pytest.approx(0.5)
    assert decay_weight(300, 100) == pytest.approx(0.125)
    assert decay_weight(-5, 100) == 1.0  # dated after "now": not older than new
    by_count = Decay(Span(50))
    old = item(10)
    assert by_count.age(old, index=110, now=0.0) == 100
    assert by_count.weight(old, index=110, now=0.0) == pytest.approx(0.25)
    by_time = Decay(Span.parse("2d"))
    dated = item(0, timestamp=1 * DAY)
    assert by_time.weight(dated, index=5, now=7 * DAY) == pytest.approx(0.5**3)
    weights = [by_count.weight(item(i), index=200, now=0.0) for i in range(0, 200, 50)]
    for older, newer in itertools.pairwise(weights):
        assert newer == pytest.approx(2 * older)  # 50 documents younger: twice the weight


def test_spans_parse_documents_and_time() -> None:
    assert Span.parse("500") == Span(500, "docs")
    assert Span.parse("12h") == Span(12 * 3600, "seconds")
    assert str(Span.parse("30d")) == "30d" and str(Span.parse("90m")) == "90m"
    assert str(Span.parse("2w")) == "2w" and str(Span(500)) == "500"
    for bad in ("0", "-3", "3y", "ten", "2.5"):
        with pytest.raises(ValueError):
            Span.parse(bad)


def test_stream_time_reads_the_document_time() -> None:
    assert (
        stream_time(Document("x", time="1790-01-08"))
        == datetime(1790, 1, 8, tzinfo=UTC).timestamp()
    )
    aware = datetime(2020, 3, 1, 12, tzinfo=UTC) + timedelta(hours=1)
    assert stream_time(Document("x", time="2020-03-01T14:00:00+01:00")) == aware.timestamp()
    now = datetime.now(UTC).timestamp()
    assert abs(stream_time(Document("x", time="not a date")) - now) < 60
    assert abs(stream_time(Document("x")) - now) < 60
