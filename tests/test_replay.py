"""`livelm replay` end to end on a tiny model: the metrics contract, the curve, the report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livelm.cli.main import main

CONTRACT_KEYS = {
    "prequential_loss",
    "perplexity",
    "tokens_per_second",
    "reference_loss_before",
    "reference_loss_after",
    "drift_events",
}


def write_stream(path: Path, lines: list[str]) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(lines):
            f.write(json.dumps({"id": f"d{i}", "time": f"2020-01-{i % 28 + 1:02d}", "text": text}))
            f.write("\n")
    return path


def test_replay_writes_the_contract(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", news_lines * 3)
    reference = write_stream(tmp_path / "ref.jsonl", news_lines[:3])
    out = tmp_path / "out"
    code = main(
        [
            "replay",
            str(stream),
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "static,seed,online",
            "--out",
            str(out),
            "--reference",
            str(reference),
            "--max-docs",
            "20",
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == str(tiny_model_dir)
    assert metrics["stream"] == str(stream)
    assert metrics["docs"] == 20 and metrics["tokens"] > 0
    assert list(metrics["strategies"]) == ["static", "seed", "online"]
    for name, m in metrics["strategies"].items():
        assert set(m) >= CONTRACT_KEYS, name
        assert m["perplexity"] == pytest.approx(math.exp(m["prequential_loss"]), rel=1e-9)
        assert m["tokens_per_second"] > 0
        assert m["drift_events"] == []
        assert m["docs"] == 20 and m["tokens"] == metrics["tokens"]
    static = metrics["strategies"]["static"]
    assert static["reference_loss_after"] == static["reference_loss_before"]
    online = metrics["strategies"]["online"]
    assert online["updates"] > 0
    assert online["reference_loss_after"] != online["reference_loss_before"]
    png = (out / "curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    page = (out / "report.html").read_text()
    assert "<table>" in page and "curve.png" in page and "online" in page


def test_replay_reads_stdin_and_thins_with_every(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", news_lines)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "livelm",
            "replay",
            "-",
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "static,online",
            "--every",
            "2",
            "--out",
            str(out),
        ],
        stdin=stream.open("rb"),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LIVELM_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["docs"] == 4
    assert all(m["docs"] == 4 for m in metrics["strategies"].values())


def test_a_bad_line_stops_replay_with_its_number(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "bad.jsonl"
    stream.write_text('{"text": "fine"}\n{"text": \n')
    code = main(
        [
            "replay",
            str(stream),
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "static",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 2
    assert f"{stream}:2: malformed JSON" in capsys.readouterr().err
    skipped = main(
        [
            "replay",
            str(stream),
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "static",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--skip-bad",
        ]
    )
    assert skipped == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["stream_stats"]["bad"] == 1 and metrics["docs"] == 1


def test_unknown_strategy_names_the_flag(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "replay",
            "x.jsonl",
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "bogus",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "--strategy 'bogus' is not known" in capsys.readouterr().err
