"""`livelm recommend`: rank the candidates of a file for the history of another, offline.

Both files are stream files (`livelm.source.files`: JSONL with `text` and an optional `id`, or
plain text, one document per blank-line-separated block); the history is read oldest first. The
model is served as the server serves a version (`livelm.server.versions.serving_copy`: bf16
where the CPU runs it fast), so a ranking here is the one `/v1/recommend` gives on the same
weights. Writes one JSON line per ranked candidate, best first: `rank`, `id`, `index` (its
line among the candidates), `score`, `scores` (each part's) and `why` (the history items that
raised it: `history` index, `id`, `method`, `value`).

Building the parser imports only `livelm.recommend.config`: no torch, no scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from livelm.model import DEFAULT_MODEL
from livelm.recommend.config import DEFAULT_METHOD, RecommendLimits


def add_recommend_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limits = RecommendLimits()
    p = sub.add_parser("recommend")  # its summary, description and example: livelm.cli.main
    p.add_argument(
        "--history", type=Path, required=True, help="what the reader read: a stream file"
    )
    p.add_argument("--candidates", type=Path, required=True, help="what to rank: a stream file")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a model (as replay's and serve's)")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help="pmi, pmi-mean, embed, tfidf, random, fused, or parts joined by +",
    )
    p.add_argument("--top-k", type=int, default=None, help="write only the best K (default: all)")
    p.add_argument("--out", default="-", help="where the JSON lines go; - for stdout")
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="a stream file whose documents add to TF-IDF's document frequencies",
    )
    p.add_argument("--no-why", action="store_true", help="skip the history items behind each")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--boundary",
        default="auto",
        help="the token every document starts with: auto, bos, eos or a token (as serve's)",
    )
    p.add_argument("--max-history", type=int, default=limits.max_history)
    p.add_argument("--max-candidates", type=int, default=limits.max_candidates)
    p.add_argument("--seed", type=int, default=0, help="the random method's seed")


def _check(args: argparse.Namespace) -> None:
    """What can be refused before anything loads."""
    from livelm.recommend.config import parse_method

    for flag, path in (("--history", args.history), ("--candidates", args.candidates)):
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    if args.corpus is not None and not args.corpus.is_file():
        raise FileNotFoundError(f"--corpus {args.corpus}: no such file")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, not {args.top_k}")
    parse_method(args.method)


def run_recommend(args: argparse.Namespace) -> None:
    _check(args)
    # torch, transformers and scikit-learn: only once the command runs.
    from livelm.learner.encoding import Encoder
    from livelm.model import autocast_dtype_for, load_model, resolve_device
    from livelm.recommend import Ranker, RecommendError, Scorer, parse_method
    from livelm.server.versions import serving_copy
    from livelm.source.files import read_stream

    method = parse_method(args.method)
    history = list(read_stream(args.history, skip_bad=False))
    candidates = list(read_stream(args.candidates, skip_bad=False))
    corpus = [d.text for d in read_stream(args.corpus)] if args.corpus is not None else []
    changes = {"max_history": args.max_history, "max_candidates": args.max_candidates}
    limits = RecommendLimits(**changes)
    scorer = None
    if method.needs_model:
        loaded = load_model(args.model, device=args.device)
        model = loaded.model
        window = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        encoder = Encoder(loaded.tokenizer, min(1024, window) if window else 1024, args.boundary)
        limits = RecommendLimits.fitted(window, encoder.max_tokens, **changes)
        tokenizer = loaded.tokenizer

        def tokenize(text: str) -> list[int]:
            ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
            return ids

        dtype = autocast_dtype_for(resolve_device(args.device))
        pad = tokenizer.pad_token_id
        scorer = Scorer(
            serving_copy(model, dtype),
            tokenize,
            encoder.boundary,
            int(pad if pad is not None else encoder.boundary),
            max_tokens=encoder.max_tokens,
        )
    try:
        ranked = Ranker(scorer, limits).recommend(
            history,
            candidates,
            method=method,
            top_k=args.top_k,
            explain=not args.no_why,
            corpus=corpus,
            seed=args.seed,
        )
    except RecommendError as e:
        flag = {"history": "--history", "candidates": "--candidates"}.get(e.field.split(".")[0])
        raise ValueError(f"{flag or e.field}: {e}") from None
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for r in ranked:
            line = {
                "rank": r.rank,
                "id": r.id,
                "index": r.index,
                "score": r.score,
                "scores": r.parts,
                "why": [
                    {"history": e.history, "id": e.id, "method": e.method, "value": e.value}
                    for e in r.why
                ],
            }
            out.write(json.dumps(line) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
