"""Documents through a Redis stream and a consumer group: many writers, many learners.

    redis://host:6379/0?stream=docs&group=learners[&consumer=NAME][&claim_idle_ms=30000]

Writers (`livelm ingest`, `POST /v1/documents` on a server started with `--source redis://...`)
add each document as one stream entry, `{"doc": JSON}`. A document id is added once: a Lua
script keeps `STREAM:ids` (id -> sha256 of the text) beside the stream, so a re-send is a no-op
and the same id with another text is refused, as the SQLite queue does. How durable an accepted
document is, is Redis's persistence setting (`appendfsync always` for every write).

Readers are consumers of the group. A learner reads, in this order:

1. its own pending entries (a consumer that restarts under the same name gets back what it had
   read and not acknowledged);
2. entries left pending by other consumers for longer than `claim_idle_ms` (a dead learner's),
   taken over with `XAUTOCLAIM`;
3. new entries (`XREADGROUP ... >`), blocking up to a timeout.

An entry is acknowledged (`XACK`) only once the version holding its update is durable. A
malformed entry (not JSON, no text) can never be learned: it is copied with the reason to
`STREAM:rejected` and acknowledged, so it does not come back forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.typing import EncodableT, FieldT

from livelm.document import Document
from livelm.source.queue import ConflictError

_ADD_ONCE = """
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then
    if prev == ARGV[2] then return 0 end
    return -1
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return redis.call('XADD', KEYS[1], '*', 'doc', ARGV[3])
"""


@dataclass(frozen=True)
class RedisSpec:
    """A parsed `redis://` source."""

    url: str  # redis://host:port/db, without the query
    stream: str
    group: str
    consumer: str
    claim_idle_ms: int = 30_000

    @classmethod
    def parse(
        cls, spec: str, consumer: str | None = None, *, default_consumer: str | None = None
    ) -> RedisSpec:
        """`consumer` overrides the URL's; `default_consumer` stands in when neither names one
        (else host-pid)."""
        parts = urlsplit(spec)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{spec!r} is not a redis:// URL")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"stream", "group", "consumer", "claim_idle_ms"}
        if unknown:
            raise ValueError(f"{spec!r}: unknown option(s) {', '.join(sorted(unknown))}")
        if not query.get("stream"):
            raise ValueError(f"{spec!r} names no stream: add ?stream=NAME&group=GROUP")
        try:
            claim = int(query.get("claim_idle_ms", 30_000))
        except ValueError:
            raise ValueError(f"{spec!r}: claim_idle_ms must be milliseconds") from None
        if claim < 1:
            raise ValueError(f"{spec!r}: claim_idle_ms must be positive")
        return cls(
            url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            stream=query["stream"],
            group=query.get("group") or "livelm",
            consumer=consumer
            or query.get("consumer")
            or default_consumer
            or f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_ms=claim,
        )

    @property
    def ids_key(self) -> str:
        return f"{self.stream}:ids"

    @property
    def rejected_key(self) -> str:
        return f"{self.stream}:rejected"


@dataclass(frozen=True)
class Delivery:
    """A document read from the stream, with the entry id that acknowledges it."""

    entry: str
    doc: Document


AddResult = Literal["added", "duplicate", "conflict"]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def encode_document(doc: Document) -> str:
    return json.dumps({"id": doc.id, "text": doc.text, "time": doc.time, "meta": doc.meta})


def decode_document(fields: dict[bytes, bytes]) -> Document:
    """The document of a stream entry; ValueError says what is wrong with a malformed one."""
    raw = fields.get(b"doc")
    if raw is None:
        raise ValueError("the entry has no 'doc' field")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"'doc' is not UTF-8 JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError("'doc' must be an object with a string 'text'")
    if not data["text"].strip():
        raise ValueError("'doc' has an empty text")
    meta = data.get("meta") or {}
    time = data.get("time")
    if not isinstance(meta, dict) or not (time is None or isinstance(time, str)):
        raise ValueError("'doc' has a 'meta' that is not an object or a 'time' not a string")
    return Document(text=data["text"], id=str(data.get("id") or ""), time=time, meta=meta)


class RedisStreamSource:
    """One consumer of a stream's group (see the module docstring); also a writer."""

    def __init__(self, spec: RedisSpec, *, client: redis.Redis | None = None) -> None:
        self.spec = spec
        self.client = client or redis.Redis.from_url(spec.url)
        self._add_once = self.client.register_script(_ADD_ONCE)
        self._own_pending_done = False
        self._pending_cursor = "0"
        try:
            self.client.xgroup_create(spec.stream, spec.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- writing --------------------------------------------------------------------------------

    def add(self, docs: Sequence[Document]) -> list[AddResult]:
        """Adds each document unless its id is already in the stream (idempotent re-sends).

        An id already added with another text (or repeated here with another) raises
        `ConflictError` and adds nothing, as the SQLite queue does; a writer racing this one
        with such an id is still refused, per document, by the script.
        """
        if not docs:
            return []
        digests = [_digest(d.text) for d in docs]
        seen: dict[str, str] = {}
        stored = self.client.hmget(self.spec.ids_key, [d.id for d in docs])
        for doc, digest, found in zip(docs, digests, stored, strict=True):
            if seen.setdefault(doc.id, digest) != digest or (
                found is not None and _text(found) != digest
            ):
                raise ConflictError(doc.id)
        pipe = self.client.pipeline(transaction=False)
        for doc, digest in zip(docs, digests, strict=True):
            self._add_once(
                keys=[self.spec.stream, self.spec.ids_key],
                args=[doc.id, digest, encode_document(doc)],
                client=pipe,
            )
        results: list[AddResult] = []
        for value in pipe.execute():
            if value == 0:
                results.append("duplicate")
            elif value == -1:
                results.append("conflict")
            else:
                results.append("added")
        return results

    # -- reading --------------------------------------------------------------------------------

    def read(self, count: int, block_ms: int = 1000) -> list[Delivery]:
        """Up to `count` documents: own pending, then reclaimed, then new ones (blocking for up
        to `block_ms` when there are none)."""
        if count < 1:
            return []
        out: list[Delivery] = []
        if not self._own_pending_done:
            # Pending entries after the cursor: each comes back once, however many reads.
            entries = self._entries(
                self.client.xreadgroup(
                    self.spec.group,
                    self.spec.consumer,
                    {self.spec.stream: self._pending_cursor},
                    count=count,
                )
            )
            if entries:
                self._pending_cursor = entries[-1][0].decode()
            if len(entries) < count:
                self._own_pending_done = True  # from here on, only new entries come to us
            out += self._deliveries(entries)
        if len(out) < count:
            claimed = self.client.xautoclaim(
                self.spec.stream,
                self.spec.group,
                self.spec.consumer,
                min_idle_time=self.spec.claim_idle_ms,
                start_id="0-0",
                count=count - len(out),
            )
            out += self._deliveries(claimed[1])
        if len(out) < count:
            fresh = self.client.xreadgroup(
                self.spec.group,
                self.spec.consumer,
                {self.spec.stream: ">"},
                count=count - len(out),
                block=None if out or block_ms <= 0 else block_ms,  # BLOCK 0 waits forever
            )
            out += self._deliveries(self._entries(fresh))
        return out

    @staticmethod
    def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if not reply:
            return []
        _, entries = reply[0]
        return list(entries)

    def _deliveries(
        self, entries: Iterable[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> list[Delivery]:
        out = []
        for entry_id, fields in entries:
            entry = entry_id.decode()
            if fields is None:  # trimmed from the stream while pending: nothing to learn
                self.ack([entry])
                continue
            try:
                out.append(Delivery(entry, decode_document(fields)))
            except ValueError as e:
                self._reject(entry, fields, str(e))
        return out

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Set a read document aside for good: copied to `STREAM:rejected` with the reason,
        then acknowledged."""
        self._reject(delivery.entry, {b"doc": encode_document(delivery.doc).encode()}, reason)

    def reject_entry(self, entry: str, reason: str) -> None:
        """`reject` by entry id (any consumer's entry)."""
        found = self.client.xrange(self.spec.stream, entry, entry)
        fields: dict[bytes, bytes] = dict(found[0][1]) if found else {}  # type: ignore[arg-type]
        self._reject(entry, fields, reason)

    def reread_pending(self) -> None:
        """Read this consumer's pending entries again from the next `read` on (what it had read
        and then dropped, after a rollback say)."""
        self._own_pending_done = False
        self._pending_cursor = "0"

    def _reject(self, entry: str, fields: dict[bytes, bytes], reason: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        record: dict[FieldT, EncodableT] = {
            "entry": entry,
            "reason": reason,
            "doc": fields.get(b"doc", b""),
        }
        pipe.xadd(self.spec.rejected_key, record)
        pipe.xack(self.spec.stream, self.spec.group, entry)
        pipe.execute()

    def ack(self, entries: Sequence[str]) -> int:
        """Acknowledge entries (any consumer's: XACK is per group); returns how many were
        pending."""
        if not entries:
            return 0
        return int(self.client.xack(self.spec.stream, self.spec.group, *entries))

    def touch(self, entries: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer holds (read, learned, not yet in a
        durable version), so that no other consumer reclaims them while it lives."""
        if entries:
            self.client.xclaim(
                self.spec.stream,
                self.spec.group,
                self.spec.consumer,
                0,
                list(entries),
                justid=True,
            )

    def pending(self) -> int:
        """Entries read by some consumer of the group and not acknowledged yet."""
        info = self.client.xpending(self.spec.stream, self.spec.group)
        return int(info["pending"])

    def backlog(self) -> int:
        """Entries not yet delivered to the group (its lag), or pending ones when Redis cannot
        say (before 7.0)."""
        for group in self.client.xinfo_groups(self.spec.stream):
            if group["name"].decode() == self.spec.group:
                lag = group.get("lag")
                return int(lag) if lag is not None else int(group["pending"])
        return 0

    def close(self) -> None:
        self.client.close()
