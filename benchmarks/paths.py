"""Where the benchmark scripts find the repository and the shared news stream."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT.parent / "shared" / "data" / "news-huffpost-2018-2022.jsonl"
