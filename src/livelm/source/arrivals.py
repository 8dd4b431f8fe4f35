"""Documents as they arrive: a stream read on a thread, with a marker for each pause.

`livelm replay -` reads stdin this way, so that its learners step on what has come when the
lines stop for a while (`tail -f feed.jsonl | livelm replay -`), instead of waiting for a full
step's worth.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from livelm.document import Document


def arrivals(
    docs: Iterator[Document], idle_s: float, read_ahead: int = 1024
) -> Iterator[Document | None]:
    """The documents of `docs` as a thread reads them, with a None each time none has come for
    `idle_s` seconds (once per pause). An error reading the stream is raised here.

    The thread reads at most `read_ahead` documents ahead, so a fast pipe into a slow learner
    holds a bounded backlog. It is a daemon: a replay stopped while stdin is open does not wait
    for its next line.

    >>> [d.text for d in arrivals(iter([Document("a"), Document("b")]), idle_s=5.0)]
    ['a', 'b']
    """
    box: queue.Queue[object] = queue.Queue(maxsize=read_ahead)
    end = object()

    def read() -> None:
        try:
            for doc in docs:
                box.put(doc)
        except BaseException as e:  # handed to the reader of `arrivals`, which raises it
            box.put(e)
        else:
            box.put(end)

    threading.Thread(target=read, name="livelm-arrivals", daemon=True).start()
    idle = False
    while True:
        try:
            item = box.get(timeout=None if idle else idle_s)
        except queue.Empty:
            idle = True
            yield None
            continue
        idle = False
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, Document)
        yield item
