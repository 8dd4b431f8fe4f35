"""Monitoring: surprise z-scores, the most surprising documents per window, emerging terms."""

from __future__ import annotations

import doctest
import itertools
import json
import random
import statistics
from pathlib import Path

import pytest

import livelm.policy.decay
import livelm.policy.drift
import livelm.policy.monitor
import livelm.policy.span
from livelm.document import Document
from livelm.policy import EmergingTerms, SurpriseMonitor, TopSurprises
from livelm.policy.monitor import terms

NEWS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "news-huffpost-2018-2022.jsonl"
)


@pytest.mark.parametrize(
    "module", [livelm.policy.decay, livelm.policy.drift, livelm.policy.monitor, livelm.policy.span]
)
def test_the_docstring_examples_run(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


def test_surprise_is_a_z_score_against_the_running_loss() -> None:
    rng = random.Random(0)
    monitor = SurpriseMonitor(half_life=200)
    zs = []
    for _ in range(3000):
        x = rng.gauss(4.0, 0.5)
        z = monitor.surprise(x)
        monitor.update(x)
        if z is not None:
            zs.append(z)
    assert len(zs) == 3000 - monitor.warmup
    assert statistics.mean(zs) == pytest.approx(0.0, abs=0.1)
    assert statistics.stdev(zs) == pytest.approx(1.0, abs=0.1)
    assert monitor.surprise(6.0) == pytest.approx(4.0, abs=0.5)  # four spreads above
    for _ in range(2000):  # the stream moves to a new level: it stops being surprising
        monitor.update(rng.gauss(6.0, 0.5))
    assert monitor.surprise(6.0) == pytest.approx(0.0, abs=0.5)
    assert monitor.surprise(float("nan")) is None


def test_top_surprises_per_window() -> None:
    top = TopSurprises(window=10, top=2, text_chars=5)
    for i in range(25):
        top.add(i, Document(f"doc number {i}", id=f"d{i}"), loss=3.0, surprise=float(i % 10))
    top.add(25, Document("warming up"), loss=3.0, surprise=None)
    windows = top.windows()
    assert [(start, end) for start, end, _ in windows] == [(0, 10), (10, 20), (20, 30)]
    assert [[s.id for s in found] for _, _, found in windows] == [
        ["d9", "d8"],
        ["d19", "d18"],
        ["d24", "d23"],
    ]
    assert windows[0][2][0].text == "doc n" and windows[0][2][0].to_dict()["surprise"] == 9.0


def test_emerging_terms_rise_in_recent_documents() -> None:
    t = EmergingTerms(recent_docs=20, min_count=3)
    assert t.top() == []
    for i in range(200):
        t.update(f"Markets and rates: the bank holds rates, story {i % 7}.")
    for i in range(20):
        extra = " Lockdown lockdown LOCKDOWN." if i % 2 else ""
        t.update(f"Virus spreads; the bank's markets fall.{extra}")
    found = {x.term: x for x in t.top()}
    # New in all 20 recent documents (ties by name), then in half of them.
    assert list(found) == ["fall", "spreads", "virus", "lockdown"]
    assert (found["virus"].recent, found["virus"].earlier) == (20, 0)
    assert found["lockdown"].recent == 10  # once per document, however often it repeats
    assert "the" not in found and "bank" not in found  # stop words; not on the rise
    summary = t.to_dict(k=3)
    assert summary["recent_docs"] == 20 and summary["earlier_docs"] == 200
    assert len(summary["terms"]) == 3
    assert terms("Trump's tweets, Trump\u2019s team") == {"trump", "tweets", "team"}


@pytest.mark.skipif(not NEWS.exists(), reason="../shared/data is not beside the project")
def test_coronavirus_emerges_from_the_news_of_march_2020() -> None:
    t = EmergingTerms(recent_docs=300)
    with NEWS.open() as f:
        records = [json.loads(line) for line in itertools.islice(f, 6000)]
    upto = next(i for i, r in enumerate(records) if r["time"] >= "2020-03-15")
    for r in records[upto - 2000 : upto]:
        t.update(r["text"])
    top = t.top(5)
    assert top[0].term == "coronavirus" and top[0].earlier == 0
    recent_texts = [r["text"] for r in records[upto - 300 : upto]]
    assert top[0].recent == sum("coronavirus" in terms(text) for text in recent_texts)
