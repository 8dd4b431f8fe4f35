"""The CLI explains itself: --version, help with defaults and an example, help and flag errors
that import no torch, `-v` after the command, and one line (exit 2, no traceback) for each bad
input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livelm import __version__
from livelm.cli.main import COMMANDS, _parser, main
from tests.server_util import ServeProcess, wait_for


def run_livelm(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """A real `python -m livelm ARGS`: its exit status and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "livelm", *args],
        input=stdin,
        capture_output=True,
        timeout=180,
        env=os.environ | {"OMP_NUM_THREADS": "1", **(env or {})},
    )
    return result.returncode, result.stderr.decode()


def one_line_error(code: int, err: str, command: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"livelm {command}: error: "), err
    assert message in lines[-1], err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"livelm {__version__}"


# What `livelm` may not import before a command runs: seconds of loading, for an answer that
# needs none of it.
HEAVY = ("torch", "transformers", "peft", "fastapi", "uvicorn", "river", "scipy")


def test_help_version_and_flag_errors_import_no_torch() -> None:
    """`--help` (the top level's and each command's), `--version` and a mistyped flag build the
    parsers, in a fresh interpreter, and import none of `HEAVY`."""
    argvs = [
        ["--help"],
        ["--version"],
        *([command, "--help"] for command in COMMANDS),
        ["replay", "news.jsonl", "--no-such-flag"],
        ["serve", "--port", "eighty"],
        ["learn", "--store", "runs/store"],  # no --source
    ]
    probe = (
        "import contextlib, io, json, sys\n"
        "from livelm.cli.main import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        try:\n            main(argv)\n        except SystemExit as e:\n"
        "            code = e.code\n"
        f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    print(json.dumps([argv, code, heavy, out.getvalue()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [argv for argv, *_ in runs] == argvs
    for argv, code, heavy, _ in runs:
        assert heavy == [], f"livelm {' '.join(argv)} imported {heavy}"
        assert code == (0 if argv[-1] in ("--help", "--version") else 2), argv
    top_help = runs[0][3]
    assert all(name in top_help for name in COMMANDS) and "examples:" in top_help


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_help_with_defaults_and_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert f"example:\n  livelm {command}" in text
    assert COMMANDS[command].example.splitlines()[0] in text
    assert "(default: " in text
    # No internal docstrings: nothing about the functions that implement the command.
    for internal in ("typed function", "plug it into", "`main`", "run_serve", "add_serve_parser"):
        assert internal not in text


def test_help_shows_each_replay_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: smollm2)",
        "(default: static,online)",
        "(default: runs/replay)",
        "(default: 500)",
        "(default: auto)",
    ):
        assert shown in text


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "s.jsonl", "-v"],
        ["-v", "replay", "s.jsonl"],
        ["serve", "--verbose"],
        ["--verbose", "serve"],
        ["learn", "--source", "redis://x/0?stream=s", "--store", "st", "-v"],
    ],
)
def test_verbose_before_or_after_the_command(argv: list[str]) -> None:
    args = _parser(argv[1] if argv[0].startswith("-") else argv[0]).parse_args(argv)
    assert args.verbose is True


def test_no_verbose_is_quiet() -> None:
    assert _parser("replay").parse_args(["replay", "s.jsonl"]).verbose is False


@pytest.fixture
def stream(tmp_path: Path, news_lines: list[str]) -> Path:
    path = tmp_path / "news.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in news_lines))
    return path


def test_a_missing_model_path_is_one_line(
    tmp_path: Path, stream: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    code = main(["replay", str(stream), "--model", str(missing), "--out", str(tmp_path / "o")])
    one_line_error(code, capsys.readouterr().err, "replay", f"--model {missing}: no such file")


def test_a_directory_without_a_model_is_one_line(
    tmp_path: Path, stream: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    code = main(["replay", str(stream), "--model", str(empty), "--out", str(tmp_path / "o")])
    message = f"--model {empty}: a directory without config.json"
    one_line_error(code, capsys.readouterr().err, "replay", message)


def test_an_unreachable_hub_id_fails_fast_in_one_line(tmp_path: Path, stream: Path) -> None:
    # No network here: the hub cannot be reached. With one, the hub says there is no such
    # model. Either way one line, well before transformers' retries would give up.
    started = time.perf_counter()
    code, err = run_livelm(
        "replay",
        str(stream),
        "--model",
        "livelm-tests-nobody/no-such-model-7f3a",
        "--out",
        str(tmp_path / "o"),
        "--quiet",
    )
    seconds = time.perf_counter() - started
    message = "--model livelm-tests-nobody/no-such-model-7f3a: not a local directory"
    one_line_error(code, err, "replay", message)
    assert re.search(r"the hub (cannot be reached|has no such model|did not answer)", err)
    assert seconds < 45  # the import of torch included; transformers alone took about a minute


def test_a_bad_model_stops_serve_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    code, err = run_livelm(
        "serve", "--model", str(missing), "--port", "0", "--data-dir", str(tmp_path / "d")
    )
    one_line_error(code, err, "serve", f"--model {missing}: no such file or directory")


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_an_out_of_range_port_is_one_line(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--port", port])
    one_line_error(code, capsys.readouterr().err, "serve", f"--port {port}: a port is 0 to 65535")


def test_a_missing_feed_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "feed.jsonl"
    code = main(["serve", "--feed", str(missing), "--data-dir", str(tmp_path / "d")])
    one_line_error(code, capsys.readouterr().err, "serve", f"--feed {missing}: no such file")


@pytest.fixture
def empty_stream(tmp_path: Path) -> Path:
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": ""}\n{"text": "   "}\n\n{"id": 3, "text": "\\n"}\n')
    return path


def test_a_stream_of_empty_documents_is_one_line(
    tmp_path: Path, empty_stream: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["replay", str(empty_stream), "--model", str(tiny_model_dir), "--out", str(tmp_path)]
    )
    message = f"stream {empty_stream}: no document with text (3 empty, 0 malformed)"
    one_line_error(code, capsys.readouterr().err, "replay", message)
    code = main(["serve", "--feed", str(empty_stream), "--data-dir", str(tmp_path / "d")])
    message = f"--feed {empty_stream}: no document with text (3 empty, 0 malformed)"
    one_line_error(code, capsys.readouterr().err, "serve", message)


def test_stdin_of_empty_documents_is_one_line(
    tmp_path: Path, empty_stream: Path, tiny_model_dir: Path
) -> None:
    code, err = run_livelm(
        "replay",
        "-",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "o"),
        stdin=empty_stream.read_bytes(),
    )
    one_line_error(code, err, "replay", "stream -: no document with text (3 empty, 0 malformed)")


def test_a_normal_run_shows_no_third_party_warnings(
    tmp_path: Path, stream: Path, tiny_model_dir: Path
) -> None:
    # LoRA (online), full weights and the seed learner: every way a model is wrapped and saved.
    code, err = run_livelm(
        "replay",
        str(stream),
        "--model",
        str(tiny_model_dir),
        "--strategy",
        "static,seed,online,online-full",
        "--out",
        str(tmp_path / "o"),
        "--save",
        str(tmp_path / "w"),
        "--quiet",
        env={"PYTHONWARNINGS": "default"},  # every warning shown, once
    )
    assert code == 0, err
    assert "Warning" not in err and "warn" not in err.lower(), err
    assert "Loading weights" not in err and "it/s" not in err, err


def test_serve_feed_reports_malformed_lines_as_replay_does(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    feed = tmp_path / "feed.jsonl"
    good = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(news_lines)]
    feed.write_text("\n".join([good[0], '{"text": ', *good[1:4], '["a list"]', *good[4:]]) + "\n")
    log = tmp_path / "serve.log"
    server = ServeProcess(
        ["--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--feed", str(feed)],
        log,
    )
    try:
        wait_for(lambda: "fed " in log.read_text(), timeout=180, every=0.1)
    finally:
        server.kill()
    text = log.read_text()
    assert f"--feed: skipped {feed}:2: malformed JSON" in text
    assert f"--feed: skipped {feed}:6: expected a JSON object, got list" in text
    assert (
        f"fed {feed}: 8 new documents, the whole stream; left out 0 empty and 2 malformed" in text
    )
    assert "Traceback" not in text and "Warning" not in text
