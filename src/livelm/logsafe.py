"""Text from outside (a request, a stream file) made safe to put in a log line.

A document's `time` or id that carries a newline would otherwise start a log line of its own,
one that reads like the server's; an ANSI escape or a bidi override would change what a
terminal shows. Every such character is written as an escape, so one event is one line.
"""

from __future__ import annotations

import unicodedata

# Control (Cc), format (Cf: bidi overrides, zero-width), line and paragraph separators, surrogates.
_UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def _escape(c: str) -> str:
    if c == "\\":
        return "\\\\"  # so that an escape in the log always stands for one character
    if unicodedata.category(c) not in _UNSAFE:
        return c
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: object, limit: int = 200) -> str:
    """`value` as text for one log line: unsafe characters escaped, cut after `limit` characters.

    >>> print(printable("2020-01-01\\nINFO version 9 live"))
    2020-01-01\\x0aINFO version 9 live
    >>> printable("x" * 300, limit=4)
    'xxxx... (300 characters)'
    """
    text = str(value)
    cut = text[:limit]
    escaped = "".join(_escape(c) for c in cut)
    return escaped if len(text) <= limit else f"{escaped}... ({len(text)} characters)"
