"""`livelm replay` end to end on a tiny model: the metrics contract, the curve, the report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

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


def test_replay_takes_learner_options_and_saves_each_learning_strategy(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", news_lines * 2)
    save = tmp_path / "weights"
    code = main(
        [
            "replay",
            str(stream),
            "--model",
            str(tiny_model_dir),
            "--strategy",
            "static,online+rank=4+targets=q_proj/v_proj+step-tokens=100,online-full",
            "--lr",
            "1e-3",
            "--precision",
            "fp32",
            "--max-docs",
            "12",
            "--out",
            str(tmp_path / "out"),
            "--save",
            str(save),
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    lora_name = "online+rank=4+targets=q_proj/v_proj+step-tokens=100+lr=1e-3+precision=fp32"
    full_name = "online-full+lr=1e-3+precision=fp32"
    assert list(metrics["strategies"]) == ["static+precision=fp32", lora_name, full_name]
    lora, full = metrics["strategies"][lora_name], metrics["strategies"][full_name]
    assert lora["config"]["lora_r"] == 4 and lora["config"]["lr"] == 1e-3
    assert lora["config"]["lora_targets"] == ["q_proj", "v_proj"]
    # About 40 tokens a document: steps of 3 documents by tokens, against one of 16 by count.
    assert 3 <= lora["steps"] <= 6 and full["steps"] == 1
    static = metrics["strategies"]["static+precision=fp32"]["config"]
    assert static["precision"] == "fp32" and static["lr"] != 1e-3  # scored alike, learns not

    # One directory per learning strategy; a `/` in a name becomes `_`.
    assert sorted(p.name for p in save.iterdir()) == sorted(
        [lora_name.replace("/", "_"), full_name]
    )
    adapter = save / lora_name.replace("/", "_")
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((adapter / "strategy.json").read_text())["name"] == lora_name
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        learned = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
        full_model = AutoModelForCausalLM.from_pretrained(save / full_name).eval()
        learned_full = full_model(input_ids=ids).logits
    assert not torch.allclose(before, learned, atol=1e-5)
    assert not torch.allclose(before, learned_full, atol=1e-5)
    assert (save / full_name / "tokenizer.json").is_file()


def test_save_with_one_strategy_writes_into_the_directory_itself(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", news_lines)
    args = ["replay", str(stream), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--strategy", "online", "--max-docs", "4", "--save", str(tmp_path)]) == 0
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "strategy.json").is_file()
    assert "saved online's weights to" in capsys.readouterr().out
    assert main([*args, "--strategy", "static", "--save", str(tmp_path), "--quiet"]) == 2
    assert "--save: no strategy named learns" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strategy", "online-full", "--rank", "8"], "--rank applies to LoRA strategies"),
        (["--strategy", "online", "--lr", "-1"], "--lr -1: must be a positive number"),
        (["--strategy", "online+step-tokens=0"], "step-tokens=0: must be at least 1"),
    ],
)
def test_a_bad_learner_option_is_one_line_naming_it(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The options are parsed before anything loads: no model is needed to refuse them.
    code = main(["replay", "x.jsonl", "--model", str(tmp_path / "none"), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_reference_every_records_forgetting_along_the_stream(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    """`--reference-every N`: the reference set is scored each time the documents read pass a
    multiple of N, into metrics.json's `reference_curve`; a static learner's curve is its
    reading before, a learner's moves, and its last point is the reading after."""
    stream = write_stream(tmp_path / "news.jsonl", news_lines * 3)
    reference = write_stream(tmp_path / "ref.jsonl", news_lines[:3])
    out = tmp_path / "out"
    argv = ["replay", str(stream), "--model", str(tiny_model_dir), "--out", str(out)]
    argv += ["--strategy", "static,online+docs-per-step=2+step-tokens=none"]
    argv += ["--reference", str(reference), "--reference-every", "6", "--max-docs", "20"]
    assert main([*argv, "--quiet"]) == 0
    strategies = json.loads((out / "metrics.json").read_text())["strategies"]
    static, online = strategies["static"], strategies["online+docs-per-step=2+step-tokens=none"]
    assert static["reference_curve"] == [[20, static["reference_loss_before"]]]
    # Two documents a step: the readings come at the first step past 6, 12 and 18 documents.
    assert [docs for docs, _ in online["reference_curve"]] == [6, 12, 18]
    losses = [loss for _, loss in online["reference_curve"]]
    assert len(set(losses)) == 3 and online["reference_loss_before"] not in losses
    assert all(math.isfinite(x) for x in losses)


def test_reference_every_needs_a_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = write_stream(tmp_path / "news.jsonl", ["one document"])
    code = main(["replay", str(stream), "--reference-every", "10", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--reference-every: name the documents with --reference" in capsys.readouterr().err
