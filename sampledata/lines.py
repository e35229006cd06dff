"""Serialisation of raw records: compact Go ``encoding/json``-style lines
(:func:`go_json_line`) and :func:`render_results`, which can mix malformed lines
(:data:`BAD_LINE_KINDS`) into a results file."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, Final

import orjson


def go_json_line(record: Any) -> bytes:
    """Compact JSON like Go's ``encoding/json``: HTML-safe escapes, raw UTF-8, no newline."""
    raw = orjson.dumps(record)
    data = raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
    if data is raw:  # orjson's buffer is over-allocated; keep a tight copy instead
        data = bytes(memoryview(raw))
    if b"\xe2\x80" in data:  # U+2028 / U+2029, escaped by Go as well
        data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return data


BAD_LINE_KINDS: Final = (
    "truncated",
    "text",
    "array",
    "missing_key",
    "wrong_type",
    "unknown_format",
)
_GARBAGE_TEXT: Final = (
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "2021/05/30 01:01:01 worker 17: too many open files",
    "<html><body>Internal error</body></html>",
    "NaN",
)


def _bad_line(kind: str, rng: random.Random, good: list[bytes]) -> bytes:
    base = orjson.loads(rng.choice(good)) if good else {"vp": "192.0.2.1", "response": []}
    if kind == "truncated":
        text = rng.choice(good).decode("utf-8") if good else '{"vp":"192.0.2.1"}'
        return text[: rng.randint(1, max(1, len(text) - 2))].encode("utf-8")
    if kind == "text":
        return rng.choice(_GARBAGE_TEXT).encode("utf-8")
    if kind == "array":
        return go_json_line([base])
    if kind == "missing_key":
        key = "response" if "vp" in base else "Results"
        base.pop(key, None)
        return go_json_line(base)
    if kind == "wrong_type":
        key = "response" if "vp" in base else "Results"
        base[key] = "x"
        return go_json_line(base)
    if kind == "unknown_format":
        return go_json_line(
            {"ip": "192.0.2.44", "domain": "example.org", "status": "ok", "time": "2021-05-30"}
        )
    raise ValueError(kind)


def render_results(
    records: Iterable[dict[str, Any]],
    *,
    seed: int = 0,
    bad_line_ratio: float = 0.0,
    trailing_newline: bool = True,
) -> tuple[bytes, int]:
    """Serialise records as JSON lines, optionally mixing in malformed lines.

    ``bad_line_ratio`` is the fraction of all lines that are malformed (cycling through
    :data:`BAD_LINE_KINDS`). Returns ``(file bytes, number of bad lines)``.
    """
    if not 0.0 <= bad_line_ratio < 1.0:
        raise ValueError("bad_line_ratio must be in [0, 1)")
    lines = [go_json_line(r) for r in records]
    n_bad = round(bad_line_ratio * len(lines) / (1.0 - bad_line_ratio)) if bad_line_ratio else 0
    if n_bad:
        rng = random.Random(f"bad-lines/{seed}/{len(lines)}/{bad_line_ratio}")
        positions = sorted(rng.randrange(len(lines) + 1) for _ in range(n_bad))
        bad = [_bad_line(BAD_LINE_KINDS[i % len(BAD_LINE_KINDS)], rng, lines) for i in range(n_bad)]
        merged: list[bytes] = []
        j = 0
        for i, line in enumerate(lines):
            while j < n_bad and positions[j] == i:
                merged.append(bad[j])
                j += 1
            merged.append(line)
        merged.extend(bad[j:])
        lines = merged
    if trailing_newline and lines:
        lines.append(b"")
    return b"\n".join(lines), n_bad
