"""Feed a stream file into the server's queue, in order, as fast as the learner keeps up.

`livelm serve --feed FILE` (and `--demo`, which feeds the State of the Union stream) starts one.
It goes through the same ingestion as `POST /v1/documents`, so ids keep it idempotent: a
restarted feeder re-sends what is already stored, which costs a lookup, and carries on. It waits
while more than `backlog` documents are queued, so the queue holds a short backlog rather than
the whole file.

It reads the file lazily, a few documents at a time. Malformed lines are reported as `replay
--skip-bad` counts them: each is logged as a warning with its line number and reason (the first
`_LOGGED_BAD`), skipped, and counted in `stats`; so are documents without text. The line at the
end of the stream says how many were left out.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from livelm.document import Document
from livelm.source.files import StreamError, StreamStats, read_stream
from livelm.source.queue import Accepted

log = logging.getLogger(__name__)

_BATCH = 8
_LOGGED_BAD = 20  # malformed lines logged one by one; the rest are counted


class _LoggedStats(StreamStats):
    """Stream counts that log each malformed line as it is skipped."""

    def record_bad(self, error: StreamError) -> None:
        super().record_bad(error)
        if self.bad <= _LOGGED_BAD:
            log.warning("--feed: skipped %s", error)
        if self.bad == _LOGGED_BAD:
            log.warning("--feed: more malformed lines are counted, not logged")


class Ingests(Protocol):
    def ingest(self, docs: Sequence[Document]) -> list[Accepted]: ...

    def backlog(self) -> int:
        """Documents queued that the learner has not taken yet."""
        ...


class Feeder:
    def __init__(self, path: Path, server: Ingests, *, every: int = 1, backlog: int = 32) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"--feed {path}: no such file")
        self.path = path
        self.server = server
        self.every = every
        self.backlog = backlog
        self.fed = 0  # documents newly stored
        self.stats: StreamStats = _LoggedStats()  # what reading the file yielded and left out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livelm-feeder", daemon=True)

    def start(self) -> None:
        every = f", every {self.every}th document" if self.every > 1 else ""
        log.info("feeding %s into the queue in order%s", self.path, every)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        stream = read_stream(self.path, skip_bad=True, stats=self.stats)
        docs = itertools.islice(stream, 0, None, self.every)
        try:
            while not self._stop.is_set():
                batch = list(itertools.islice(docs, _BATCH))
                if not batch:
                    self._report_end()
                    return
                while self.server.backlog() > self.backlog:
                    if self._stop.wait(0.25):
                        return
                accepted = self.server.ingest(batch)
                self.fed += sum(not a.duplicate for a in accepted)
        except Exception:
            log.exception("the feeder stopped")

    def _report_end(self) -> None:
        log.log(
            logging.WARNING if self.stats.bad else logging.INFO,
            "fed %s: %d new documents, the whole stream; left out %d empty and %d malformed%s",
            self.path,
            self.fed,
            self.stats.empty,
            self.stats.bad,
            f" (first: {self.stats.errors[0]})" if self.stats.errors else "",
        )
