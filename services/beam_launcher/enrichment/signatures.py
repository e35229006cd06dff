"""Blockpage and false-positive signatures: loading and one-pass matching.

A signature is a JSON line ``{"fingerprint": ..., "pattern": ...}``.  A page is a
*known blockpage* when a blockpage pattern matches it and no false-positive pattern
does; false positives take precedence, and within a kind the signature that comes
first in its file wins.  Every pattern is kept: a fingerprint that appears more than
once gets the ids ``fp``, ``fp~2``, ``fp~3``, ... (the legacy system kept them in a
dict keyed by fingerprint and silently lost 7 blockpage and 4 false-positive patterns).

Semantics are those of ``re.search(pattern, page, re.DOTALL)`` for each pattern,
but a page is scanned once: every pattern is translated from Python's own parse
tree into an equivalent RE2 pattern and all of them go into one ``re2.Set``, whose
DFA reports every matching pattern in a single linear pass.  The translation is
what keeps the semantics equal; RE2 read literally would differ from Python here:

* ``\\d \\w \\s`` (and negations) are ASCII-only in RE2 but Unicode in Python
  (``\\w`` vs ``"Б"``; ``\\s`` vs ``"\\x0b"``, ``"\\x1c"``, ``"\\xa0"``);
* case-insensitive matching folds differently (Python ``(?i)i`` matches ``"İ"``
  and ``"ı"``, RE2's does not);
* ``a{,2}`` is ``a{0,2}`` in Python but a literal in RE2; ``[[:alpha:]]`` is a POSIX
  class in RE2 but a plain set followed by ``]`` in Python; ``\\Z`` is RE2's ``\\z``;
* ``$`` also matches before a final newline in Python; ``\\B`` never matches an
  empty string in Python 3.11; Python's ``\\b`` uses Unicode word characters.

Single-character nodes whose meaning depends on Unicode tables (classes with
``\\d\\w\\s``, case-insensitive literals and sets) are turned into explicit RE2 code
point ranges computed by asking Python's ``re`` itself which code points they
match, so the two engines agree by construction.  Constructs with no exact RE2
equivalent (non-multiline ``$``, ``\\B``, Unicode ``\\b``, backreferences,
lookarounds, conditionals, atomic groups, possessive repeats, repeat counts above
RE2's limit of 1000) keep a compiled Python regex that is checked separately, and
only when it could still change the answer.  A pattern that only RE2 compiles
(e.g. ``\\pL``) is used as is, with RE2's semantics and ``.`` matching newlines.

Pages may hold any code point, including control characters and lone surrogates
(from JSON escapes such as ``\\ud800``).  They are encoded with
``errors="surrogatepass"``: each surrogate becomes its own three-byte sequence,
which RE2 reads as one code point, just as Python sees one character.

The matcher is picklable (it pickles its signatures and rebuilds the RE2 set when
unpickled); building it from the real files takes a few tens of milliseconds.

Example:
    >>> blockpages = load_signatures(
    ...     ['{"fingerprint": "b_denied", "pattern": "Access (to this site )?denied"}'],
    ...     "blockpage",
    ... )
    >>> false_positives = load_signatures(
    ...     ['{"fingerprint": "x_nginx", "pattern": "Access denied by nginx"}'],
    ...     "false_positive",
    ... )
    >>> matcher = SignatureMatcher(false_positives, blockpages)
    >>> hit = matcher.match("<h1>Access to this site denied</h1>")
    >>> hit.is_known_blockpage, hit.signature.id
    (True, 'b_denied')
    >>> matcher.match("Access denied by nginx").is_known_blockpage
    False
    >>> matcher.match("Welcome") is None
    True
"""

from __future__ import annotations

import array
import functools
import importlib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import re2

from services.common.logsetup import get_logger

# CPython's regex parser (pinned interpreter: 3.11).  It is the reference for what a
# pattern means, so the RE2 translation is built from its parse tree.
_sre_parse: Any = importlib.import_module("re._parser")
_sre: Any = importlib.import_module("re._constants")

BLOCKPAGE: Final = "blockpage"
FALSE_POSITIVE: Final = "false_positive"
_KINDS: Final = (BLOCKPAGE, FALSE_POSITIVE)

#: Default RE2 memory budget for the set's program and DFA state cache.  It is
#: allocated only as states are discovered: ordinary pages (incl. a 65 KB one) add no
#: measurable memory.  A contrived 84 KB page made of fragments of all 1,082 real
#: signatures needs ~80 MB of DFA states; with less the cache is flushed and refilled,
#: which stays exact but ~10x slower for such a page (~90 ms, about the legacy loop).
RE2_MAX_MEM: Final = 64 << 20

_PY_COMPILE_ERRORS = (re.error, OverflowError, RecursionError, ValueError)


@dataclass(frozen=True, slots=True)
class Signature:
    """One pattern from a signature file; ``index`` is its 0-based non-blank line."""

    id: str
    fingerprint: str
    pattern: str
    kind: str  # "blockpage" | "false_positive"
    index: int


@dataclass(frozen=True, slots=True)
class PageMatch:
    """The winning signature; ``is_known_blockpage`` is False for a false positive."""

    is_known_blockpage: bool
    signature: Signature


class SignatureFileError(ValueError):
    """A signature line that cannot be used; names the file label and 1-based line."""

    def __init__(self, label: str, line: int, reason: str) -> None:
        super().__init__(f"{label}:{line}: {reason}")
        self.label = label
        self.line = line
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.label, self.line, self.reason))


def _re2_options(max_mem: int = RE2_MAX_MEM) -> Any:
    options = re2.Options()
    options.dot_nl = True
    options.max_mem = max_mem
    options.log_errors = False
    return options


def _compile_problem(pattern: str) -> str | None:
    """None if Python ``re`` or RE2 compiles the pattern, else both errors."""
    try:
        re.compile(pattern, re.DOTALL)
        return None
    except _PY_COMPILE_ERRORS as exc:
        py_error = str(exc)
    try:
        re2.compile(pattern, _re2_options())
        return None
    except (re2.error, UnicodeEncodeError) as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"Python re: {py_error}; RE2: {detail}"


def load_signatures(
    lines: Iterable[str], kind: str, label: str = "<signatures>"
) -> list[Signature]:
    """Parse JSON-lines signatures; blank lines are skipped, bad lines raise.

    Raises SignatureFileError for invalid JSON, a missing/non-string/empty
    fingerprint or pattern, or a pattern that neither Python ``re`` nor RE2 compiles.
    (An empty pattern would match every page, so it is rejected too.)
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    rows: list[tuple[str, str]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.removeprefix("\ufeff") if lineno == 1 else raw
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SignatureFileError(label, lineno, f"invalid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise SignatureFileError(label, lineno, "expected a JSON object")
        fingerprint = obj.get("fingerprint")
        pattern = obj.get("pattern")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise SignatureFileError(label, lineno, "missing or non-string 'fingerprint'")
        if not isinstance(pattern, str) or not pattern:
            raise SignatureFileError(
                label, lineno, f"missing, empty or non-string 'pattern' for {fingerprint!r}"
            )
        problem = _compile_problem(pattern)
        if problem is not None:
            raise SignatureFileError(
                label, lineno, f"pattern for {fingerprint!r} does not compile ({problem})"
            )
        rows.append((fingerprint, pattern))
    return [
        Signature(id=sig_id, fingerprint=fp, pattern=pat, kind=kind, index=i)
        for i, (sig_id, (fp, pat)) in enumerate(zip(_unique_ids(rows), rows, strict=True))
    ]


def _unique_ids(rows: Sequence[tuple[str, str]]) -> list[str]:
    """First occurrence keeps the fingerprint; repeats get ``fp~2``, ``fp~3``, ...

    A generated id never collides with a fingerprint that appears anywhere in the file.
    """
    reserved = {fp for fp, _ in rows}
    used: set[str] = set()
    seen: dict[str, int] = {}
    ids = []
    for fp, _ in rows:
        n = seen.get(fp, 0) + 1
        sig_id = fp
        if n > 1:
            sig_id = f"{fp}~{n}"
            while sig_id in used or sig_id in reserved:
                n += 1
                sig_id = f"{fp}~{n}"
        seen[fp] = n
        used.add(sig_id)
        ids.append(sig_id)
    return ids


# --------------------------------------------------------------------------------------
# Python parse tree -> equivalent RE2 pattern
# --------------------------------------------------------------------------------------


class _Untranslatable(Exception):
    """The pattern uses a construct that RE2 cannot reproduce exactly."""


_CATEGORY_SOURCE: Final[dict[Any, str]] = {
    _sre.CATEGORY_DIGIT: r"\d",
    _sre.CATEGORY_NOT_DIGIT: r"\D",
    _sre.CATEGORY_SPACE: r"\s",
    _sre.CATEGORY_NOT_SPACE: r"\S",
    _sre.CATEGORY_WORD: r"\w",
    _sre.CATEGORY_NOT_WORD: r"\W",
}


def _re2_char(cp: int) -> str:
    """One code point as RE2 syntax (ASCII letters/digits bare, the rest escaped)."""
    if cp < 128 and chr(cp).isalnum():
        return chr(cp)
    return f"\\x{{{cp:x}}}"


_ASCII_RE2: Final = tuple(_re2_char(cp) for cp in range(128))


def _re2_class(ranges: Sequence[tuple[int, int]], negate: bool = False) -> str:
    if not ranges:  # matches nothing (or, negated, anything)
        return "(?s:.)" if negate else r"[^\x{0}-\x{10ffff}]"
    body = "".join(
        _re2_char(lo) if lo == hi else f"{_re2_char(lo)}-{_re2_char(hi)}" for lo, hi in ranges
    )
    return f"[{'^' if negate else ''}{body}]"


def _py_char(cp: int) -> str:
    return f"\\U{cp:08x}"


def _py_set_source(items: Sequence[tuple[Any, Any]]) -> str:
    """Python source for a parsed ``[...]`` set."""
    parts = []
    for op, av in items:
        if op is _sre.NEGATE:
            parts.append("^")
        elif op is _sre.LITERAL:
            parts.append(_py_char(av))
        elif op is _sre.RANGE:
            parts.append(f"{_py_char(av[0])}-{_py_char(av[1])}")
        elif op is _sre.CATEGORY and av in _CATEGORY_SOURCE:
            parts.append(_CATEGORY_SOURCE[av])
        else:
            raise _Untranslatable(f"set item {op}")
    return f"[{''.join(parts)}]"


@functools.cache
def _every_code_point() -> str:
    """All of U+0000..U+10FFFF (lone surrogates included) in one ~4 MB string.

    Decoded from UTF-32 code units in one call: 0.04 CPU-s, against 0.15 s for joining
    1.1M ``chr`` results (paid by every worker process whose signatures need it).
    """
    units = array.array("I", range(sys.maxunicode + 1))
    codec = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    return units.tobytes().decode(codec, "surrogatepass")


@functools.cache
def _python_char_ranges(source: str, flags: int) -> tuple[tuple[int, int], ...]:
    """Which code points does a one-character Python node match?  Ask Python.

    ``(?:node)+`` is run over every code point; each match is one maximal run, i.e.
    one range.  Only nodes that depend on Unicode tables get here (``\\w``-style
    classes, case-insensitive letters), so the cache stays small.
    """
    runs = re.compile(f"(?:{source})+", flags).finditer(_every_code_point())
    return tuple((m.start(), m.end() - 1) for m in runs)


def _python_char_class(source: str, flags: int) -> str:
    return _re2_class(_python_char_ranges(source, flags & (re.IGNORECASE | re.ASCII)))


def _is_cased(cp: int) -> bool:
    ch = chr(cp)
    return ch.lower() != ch or ch.upper() != ch


class _Translator:
    """Renders a Python parse tree as an RE2 pattern with the same matches."""

    def render(self, parsed: Any) -> str:
        """RE2 source for the result of ``re._parser.parse``; raises _Untranslatable."""
        return self._seq(parsed, parsed.state.flags)

    def _seq(self, items: Iterable[tuple[Any, Any]], flags: int) -> str:
        out = []
        nocase = flags & re.IGNORECASE
        literal = _sre.LITERAL
        for op, av in items:
            if op is literal and av < 128 and not (nocase and _is_cased(av)):
                out.append(_ASCII_RE2[av])  # fast path: most signatures are literal text
            else:
                out.append(self._node(op, av, flags))
        return "".join(out)

    def _node(self, op: Any, av: Any, flags: int) -> str:
        nocase = bool(flags & re.IGNORECASE)
        if op is _sre.LITERAL:
            if nocase and _is_cased(av):
                return _python_char_class(_py_char(av), flags)
            return _re2_char(av)
        if op is _sre.NOT_LITERAL:
            if nocase and _is_cased(av):
                return _python_char_class(f"[^{_py_char(av)}]", flags)
            return _re2_class([(av, av)], negate=True)
        if op is _sre.ANY:
            return "(?s:.)" if flags & re.DOTALL else r"[^\n]"
        if op is _sre.IN:
            if nocase or any(item_op is _sre.CATEGORY for item_op, _ in av):
                return _python_char_class(_py_set_source(av), flags)
            return self._plain_set(av)
        if op is _sre.BRANCH:
            return "(?:" + "|".join(self._seq(alt, flags) for alt in av[1]) + ")"
        if op is _sre.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            return "(?:" + self._seq(sub, (flags | add_flags) & ~del_flags) + ")"
        if op is _sre.MAX_REPEAT or op is _sre.MIN_REPEAT:
            lo, hi, sub = av
            bounds = f"{{{lo},}}" if hi >= _sre.MAXREPEAT else f"{{{lo},{hi}}}"
            lazy = "?" if op is _sre.MIN_REPEAT else ""
            return f"(?:{self._seq(sub, flags)}){bounds}{lazy}"
        if op is _sre.AT:
            return self._at(av, flags)
        raise _Untranslatable(str(op))

    @staticmethod
    def _plain_set(items: Sequence[tuple[Any, Any]]) -> str:
        negate = False
        ranges: list[tuple[int, int]] = []
        for op, av in items:
            if op is _sre.NEGATE:
                negate = True
            elif op is _sre.LITERAL:
                ranges.append((av, av))
            elif op is _sre.RANGE:
                ranges.append((av[0], av[1]))
            else:
                raise _Untranslatable(f"set item {op}")
        return _re2_class(ranges, negate=negate)

    @staticmethod
    def _at(code: Any, flags: int) -> str:
        multiline = bool(flags & re.MULTILINE)
        if code is _sre.AT_BEGINNING:
            return "(?m:^)" if multiline else r"\A"
        if code is _sre.AT_BEGINNING_STRING:
            return r"\A"
        if code is _sre.AT_END_STRING:
            return r"\z"
        if code is _sre.AT_END and multiline:
            return "(?m:$)"
        if code is _sre.AT_BOUNDARY and flags & re.ASCII:
            return r"\b"
        # Non-multiline "$" (end or before a final newline), Python's Unicode "\b",
        # and "\B" (never matches an empty string in Python 3.11) have no RE2 twin.
        raise _Untranslatable(str(code))


# --------------------------------------------------------------------------------------
# Matcher
# --------------------------------------------------------------------------------------

_NO_MATCH: Final = sys.maxsize


class SignatureMatcher:
    """All signatures in one RE2 set; false positives beat blockpages, then file order.

    ``match`` / ``match_all`` behave as if every pattern were tried with
    ``re.search(pattern, page, re.DOTALL)``, but cost one linear RE2 pass per page
    (plus a Python search per pattern in ``fallback_signatures``, if any).
    """

    def __init__(
        self,
        false_positives: Sequence[Signature],
        blockpages: Sequence[Signature],
        *,
        max_mem: int = RE2_MAX_MEM,
    ) -> None:
        for kind, sigs in ((FALSE_POSITIVE, false_positives), (BLOCKPAGE, blockpages)):
            for sig in sigs:
                if sig.kind != kind:
                    raise ValueError(f"signature {sig.id!r} has kind {sig.kind!r}, not {kind!r}")
        self._false_positives = tuple(sorted(false_positives, key=lambda s: s.index))
        self._blockpages = tuple(sorted(blockpages, key=lambda s: s.index))
        # Rank = precedence: all false positives first, each kind in file order.
        self._ranked: tuple[Signature, ...] = self._false_positives + self._blockpages
        self._n_false_positives = len(self._false_positives)
        self._max_mem = max_mem
        self._options = _re2_options(max_mem)
        self._singles: list[Any] | None = None
        #: Pages for which the RE2 set's DFA ran out of memory (answered per pattern).
        self.dfa_failures = 0
        translator = _Translator()
        plans = [(rank, *self._plan(translator, sig)) for rank, sig in enumerate(self._ranked)]
        try:
            self._build(plans)
        except re2.error:  # program over max_mem: stay exact, check in Python instead
            get_logger(__name__).warning(
                "re2_set_compile_failed", signatures=len(self._ranked), max_mem=max_mem
            )
            self._build([(r, None if py_ok else src, py_ok) for r, src, py_ok in plans])

    @staticmethod
    def _plan(translator: _Translator, sig: Signature) -> tuple[str | None, bool]:
        """(RE2 source or None for the Python path, whether Python ``re`` compiles it)."""
        try:
            parsed = _sre_parse.parse(sig.pattern, re.DOTALL)
        except _PY_COMPILE_ERRORS:
            parsed = None
        if parsed is not None:
            try:
                return translator.render(parsed), True
            except _Untranslatable:
                try:  # some errors (e.g. variable-width look-behind) only show here
                    re.compile(sig.pattern, re.DOTALL)
                    return None, True
                except _PY_COMPILE_ERRORS:
                    pass
        problem = _compile_problem(sig.pattern)
        if problem is not None:
            raise ValueError(f"signature {sig.id!r}: pattern does not compile ({problem})")
        return sig.pattern, False  # RE2-only syntax: RE2 semantics

    def _build(self, plans: Sequence[tuple[int, str | None, bool]]) -> None:
        """Fill the RE2 set and the Python list; raises re2.error if the set is too big."""
        self._set_sources: list[str] = []
        self._set_ranks: list[int] = []
        self._python: list[tuple[int, re.Pattern[str]]] = []
        self._set: Any = re2.Set.SearchSet(self._options)
        for rank, source, python_ok in plans:
            if source is not None:
                try:
                    self._set.Add(source)
                except re2.error:  # e.g. a repeat count above RE2's limit of 1000
                    if not python_ok:
                        raise ValueError(f"RE2 rejects {self._ranked[rank].id!r}") from None
                else:
                    self._set_sources.append(source)
                    self._set_ranks.append(rank)
                    continue
            self._python.append((rank, re.compile(self._ranked[rank].pattern, re.DOTALL)))
        if not self._set_sources:
            self._set = None
            return
        # Set.Match returns nothing at all when its DFA runs out of memory; this
        # always-matching sentinel tells that failure apart from "no pattern matched".
        self._sentinel = self._set.Add("")
        self._set.Compile()

    @classmethod
    def from_files(
        cls, blockpage_lines: Iterable[str], false_positive_lines: Iterable[str]
    ) -> SignatureMatcher:
        """Build from the lines of the two JSON-lines signature files."""
        return cls(
            load_signatures(false_positive_lines, FALSE_POSITIVE, "false_positive_signatures"),
            load_signatures(blockpage_lines, BLOCKPAGE, "blockpage_signatures"),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_matcher, (self._false_positives, self._blockpages, self._max_mem))

    def __len__(self) -> int:
        return len(self._ranked)

    @property
    def signatures(self) -> tuple[Signature, ...]:
        """All signatures in precedence order."""
        return self._ranked

    @property
    def fallback_signatures(self) -> tuple[Signature, ...]:
        """Signatures checked with Python ``re`` because RE2 cannot express them exactly."""
        return tuple(self._ranked[rank] for rank, _ in self._python)

    def _set_hits(self, page: str) -> list[int]:
        """Ranks of the RE2-set signatures that match ``page`` (unordered)."""
        if self._set is None:
            return []
        data = page.encode("utf-8", "surrogatepass")
        found = self._set.Match(data)
        if found is None:  # DFA out of memory: exact but slower per-pattern search
            self.dfa_failures += 1
            if self._singles is None:
                self._singles = [re2.compile(s, self._options) for s in self._set_sources]
            return [
                self._set_ranks[i]
                for i, rx in enumerate(self._singles)
                if rx.search(data) is not None
            ]
        ranks = self._set_ranks
        sentinel = self._sentinel
        return [ranks[i] for i in found if i != sentinel]

    def _result(self, rank: int) -> PageMatch:
        return PageMatch(rank >= self._n_false_positives, self._ranked[rank])

    def match(self, page: str) -> PageMatch | None:
        """The winning signature for ``page``, or None if nothing matches."""
        hits = self._set_hits(page)
        best = min(hits) if hits else _NO_MATCH
        for rank, regex in self._python:  # sorted by rank
            if rank >= best:
                break
            if regex.search(page) is not None:
                best = rank
                break
        return None if best == _NO_MATCH else self._result(best)

    def match_all(self, page: str) -> list[Signature]:
        """Every signature that matches ``page``, in precedence order."""
        ranks = self._set_hits(page)
        ranks.extend(rank for rank, regex in self._python if regex.search(page) is not None)
        ranks.sort()
        return [self._ranked[rank] for rank in ranks]


def _rebuild_matcher(
    false_positives: Sequence[Signature], blockpages: Sequence[Signature], max_mem: int
) -> SignatureMatcher:
    return SignatureMatcher(false_positives, blockpages, max_mem=max_mem)
