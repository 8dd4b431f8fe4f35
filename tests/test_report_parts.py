"""The replay report's parts: stream time, the per-group breakdown, the most surprising documents,
strategy minus static, the command that made it, docs.jsonl; and a report that survives Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livelm.cli.main import main
from livelm.document import Document
from livelm.learner import DocScore, StepReport, Tally
from livelm.report.docs import (
    MAX_GROUPS,
    OTHER_GROUP,
    DocRecord,
    group_figures,
    mean_difference,
    stream_times,
)
from tests.server_util import sigint_as_in_a_terminal

CATEGORIES = ["WEATHER", "BUSINESS", "HEALTH", "SPORTS"]


def write_stream(path: Path, lines: list[str], *, ordered: bool = True) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(lines):
            day = i if ordered else (i * 7) % len(lines)  # out of time order when not ordered
            record = {
                "id": f"d{i}",
                "time": f"2020-{day // 28 + 1:02d}-{day % 28 + 1:02d}",
                "category": CATEGORIES[i % len(CATEGORIES)],
                "text": f"{text} ({i})",
            }
            f.write(json.dumps(record) + "\n")
    return path


def read_docs(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_report_explains_itself(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", news_lines * 5)
    out = tmp_path / "out"
    argv = [
        "replay",
        str(stream),
        "--model",
        str(tiny_model_dir),
        "--strategy",
        "static,online+lr=1e-2",
        "--group-by",
        "category",
        "--surprise-window",
        "10",
        "--report-every",
        "7",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["progress"]["strategies_pending"] == []
    assert metrics["command"] == "livelm " + " ".join(argv)
    assert metrics["options"]["group_by"] == "category" and metrics["options"]["report_every"] == 7
    assert metrics["options"]["run"] == "one after another"
    assert metrics["x_axis"] == "time" and metrics["static"] == "static"

    # docs.jsonl: each document once, in stream order, with every strategy's loss.
    docs = read_docs(out / "docs.jsonl")
    assert [d["id"] for d in docs] == [f"d{i}" for i in range(40)]
    assert docs[3]["time"] == "2020-01-04" and docs[3]["group"] == "SPORTS"
    assert all(set(d["loss"]) == {"static", "online+lr=1e-2"} for d in docs)  # type: ignore[arg-type]

    # The per-group figures and online minus static agree with docs.jsonl, token-weighted.
    for name, m in metrics["strategies"].items():
        assert m["status"] == "complete"
        for group in CATEGORIES:
            mine = [d for d in docs if d["group"] == group]
            tokens = sum(d["tokens"] for d in mine)  # type: ignore[misc]
            loss = sum(d["loss"][name] * d["tokens"] for d in mine) / tokens  # type: ignore[index]
            figures = m["groups"][group]
            assert figures["docs"] == 10 and figures["tokens"] == tokens
            assert figures["prequential_loss"] == pytest.approx(loss, rel=1e-9)
            assert figures["perplexity"] == pytest.approx(math.exp(loss), rel=1e-9)
    online = metrics["strategies"]["online+lr=1e-2"]
    tokens = sum(d["tokens"] for d in docs)  # type: ignore[misc]
    diff = sum(
        (d["loss"]["online+lr=1e-2"] - d["loss"]["static"]) * d["tokens"]  # type: ignore[index]
        for d in docs
    )
    assert online["loss_minus_static"] == pytest.approx(diff / tokens, rel=1e-9)
    assert online["loss_minus_static"] < 0  # it learned the repeated headlines
    assert metrics["strategies"]["static"]["loss_minus_static"] is None

    page = (out / "report.html").read_text()
    assert "By category" in page and all(c in page for c in CATEGORIES)
    assert "Most surprising documents" in page
    surprising = [json.loads(line) for line in (out / "surprises.jsonl").read_text().splitlines()]
    assert surprising and surprising[0]["text"].split(" (")[0] in page
    assert "Against stream time" in page and "minus <code>static</code>" in page
    assert "livelm replay " in page and "--group-by category" in page
    assert "refresh" not in page  # a finished report does not reload itself
    png = (out / "curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert not list(out.glob(".*.tmp"))


def test_times_out_of_order_plot_against_the_document_index(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", news_lines, ordered=False)
    out = tmp_path / "out"
    args = ["replay", str(stream), "--model", str(tiny_model_dir), "--strategy", "online"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["x_axis"] == "index" and metrics["static"] is None
    assert metrics["group_by"] is None and "groups" not in metrics["strategies"]["online"]
    page = (out / "report.html").read_text()
    assert "times are missing or out of order" in page and "Run with <code>static</code>" in page


def _tally(losses: list[float], tokens: list[int]) -> Tally:
    pairs = enumerate(zip(losses, tokens, strict=True))
    scores = tuple(DocScore(f"d{i}", x, n) for i, (x, n) in pairs)
    report = StepReport(0, scores, 0.0, False, "none", 0.0, None, sum(tokens), 0.0)
    return Tally().add(report)


def test_groups_past_the_cap_are_summed_as_other() -> None:
    groups = MAX_GROUPS + 5
    records = [
        DocRecord.of(i, Document("x", meta={"source": f"s{i % groups}"}), "source")
        for i in range(groups * 2)
    ]
    tally = _tally([1.0] * len(records), [2] * len(records))
    figures = group_figures(records, tally)
    assert len(figures) == MAX_GROUPS and figures[OTHER_GROUP]["docs"] == 12
    assert all(f["prequential_loss"] == 1.0 for f in figures.values())
    # A strategy that has not reached a document has no figure for it.
    assert sum(f["docs"] for f in group_figures(records, _tally([1.0] * 3, [2] * 3)).values()) == 3


def test_minus_static_skips_documents_without_a_finite_loss() -> None:
    static = _tally([3.0, 3.0, math.nan], [10, 30, 5])
    online = _tally([2.0, 2.5, 1.0], [10, 30, 5])
    assert mean_difference(online, static) == pytest.approx((-1.0 * 10 - 0.5 * 30) / 40)
    assert stream_times([DocRecord(0, "a", "2020-01-01"), DocRecord(1, "b", None)]) is None


def test_ctrl_c_keeps_the_report_of_what_was_done(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    # Long enough that the replay cannot finish before the signal comes.
    stream = write_stream(tmp_path / "news.jsonl", news_lines * 500)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livelm",
            "replay",
            str(stream),
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "static,seed",
            "--report-every",
            "200",
            "--out",
            str(out),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1", "LIVELM_CACHE": str(tmp_path / "cache")},
        preexec_fn=sigint_as_in_a_terminal,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until a partial report shows the second strategy
            if (out / "metrics.json").is_file():
                metrics = json.loads((out / "metrics.json").read_text())
                if "seed" in metrics["strategies"]:
                    break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("no partial report came")
        assert metrics["status"] == "running"
        assert metrics["strategies"]["static"]["status"] == "complete"
        assert "at document" in metrics["progress"]["note"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("livelm replay: interrupted at document ")
    assert "of strategy seed (2 of 2)" in line and "report.html covers" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    static, seed = metrics["strategies"]["static"], metrics["strategies"]["seed"]
    assert static["status"] == "complete" and static["docs"] == 4000
    assert seed["status"] == "interrupted" and 200 <= seed["docs"] < 4000
    assert f"document {seed['docs']} of strategy seed" in line
    docs = read_docs(out / "docs.jsonl")
    assert len(docs) == 4000  # static reached them all
    assert sum("seed" in d["loss"] for d in docs) == seed["docs"]  # type: ignore[operator]
    page = (out / "report.html").read_text()
    assert "Interrupted at document" in page and "not started" not in page
    assert (out / "curve.png").read_bytes().startswith(b"\x89PNG")
