"""Blockpage / false-positive signatures: loading, precedence and Python-equivalent matching."""

from __future__ import annotations

import pickle
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample, Unsatisfiable

from services.beam_launcher.enrichment.signatures import (
    PageMatch,
    Signature,
    SignatureFileError,
    SignatureMatcher,
    load_signatures,
)

REAL_RESOURCES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "resources"
BLOCKPAGE_FILE = REAL_RESOURCES / "blockpage_signatures.json"
FALSE_POSITIVE_FILE = REAL_RESOURCES / "false_positive_signatures.json"
LONG_PAGE_FILE = REAL_RESOURCES / "long_blockpage.html"

# Fingerprints the legacy dict silently shadowed (anchor-inventory §3.5).
DUPLICATE_BLOCKPAGE_IDS = {
    "c_isp_ru_taiget~2",
    "c_isp_id_melsa~2",
    "e_unk_ru_blocked~2",
    "e_unk_ru_blocked~3",
    "e_unk_id_blocked~2",
    "f_gen_ru_3~2",
    "f_gen_access_denied_satellite~2",
}
DUPLICATE_FALSE_POSITIVE_IDS = {
    "x_scientology~2",
    "satellite_fp_502~2",
    "satellite_fp_no_site_found~2",
    "satellite_general2~2",
}


# ----------------------------------------------------------------------------- helpers


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        pytest.skip(f"real fixtures not found at {path}")
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def bp(index: int, pattern: str, fingerprint: str | None = None) -> Signature:
    fp = fingerprint or f"b{index}"
    return Signature(id=fp, fingerprint=fp, pattern=pattern, kind="blockpage", index=index)


def fp(index: int, pattern: str, fingerprint: str | None = None) -> Signature:
    name = fingerprint or f"f{index}"
    return Signature(id=name, fingerprint=name, pattern=pattern, kind="false_positive", index=index)


def reference_all(
    false_positives: Sequence[Signature], blockpages: Sequence[Signature], page: str
) -> list[Signature]:
    """The legacy semantics: every pattern tried with re.search(..., re.DOTALL), in order."""
    ordered = sorted(false_positives, key=lambda s: s.index) + sorted(
        blockpages, key=lambda s: s.index
    )
    return [s for s in ordered if re.search(s.pattern, page, re.DOTALL) is not None]


def reference_match(
    false_positives: Sequence[Signature], blockpages: Sequence[Signature], page: str
) -> PageMatch | None:
    hits = reference_all(false_positives, blockpages, page)
    if not hits:
        return None
    return PageMatch(hits[0].kind == "blockpage", hits[0])


_EXAMPLE_SETTINGS = settings(
    database=None,
    deadline=None,
    max_examples=200,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def example_for(pattern: str) -> str | None:
    """A deterministic string that Python's re.search(pattern, ., DOTALL) matches."""
    compiled = re.compile(pattern, re.DOTALL)
    try:
        return find(
            st.from_regex(compiled),
            lambda s: compiled.search(s) is not None,
            settings=_EXAMPLE_SETTINGS,
            random=random.Random(0),
        )
    except (NoSuchExample, Unsatisfiable):
        return None


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real_blockpages() -> list[Signature]:
    return load_signatures(_lines(BLOCKPAGE_FILE), "blockpage", BLOCKPAGE_FILE.name)


@pytest.fixture(scope="module")
def real_false_positives() -> list[Signature]:
    return load_signatures(_lines(FALSE_POSITIVE_FILE), "false_positive", FALSE_POSITIVE_FILE.name)


@pytest.fixture(scope="module")
def real_matcher(
    real_false_positives: list[Signature], real_blockpages: list[Signature]
) -> SignatureMatcher:
    return SignatureMatcher(real_false_positives, real_blockpages)


@pytest.fixture(scope="module")
def long_page() -> str:
    if not LONG_PAGE_FILE.is_file():
        pytest.skip(f"real fixtures not found at {LONG_PAGE_FILE}")
    return LONG_PAGE_FILE.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- real files


def test_real_files_keep_every_pattern(
    real_blockpages: list[Signature], real_false_positives: list[Signature]
) -> None:
    assert len(real_blockpages) == 622
    assert len(real_false_positives) == 460
    for sigs in (real_blockpages, real_false_positives):
        assert len({s.id for s in sigs}) == len(sigs)
        assert [s.index for s in sigs] == list(range(len(sigs)))
    assert len({s.fingerprint for s in real_blockpages}) == 615
    assert len({s.fingerprint for s in real_false_positives}) == 456
    assert {s.id for s in real_blockpages if "~" in s.id} == DUPLICATE_BLOCKPAGE_IDS
    assert {s.id for s in real_false_positives if "~" in s.id} == DUPLICATE_FALSE_POSITIVE_IDS


def test_real_triplicate_fingerprint_gets_suffixes(real_blockpages: list[Signature]) -> None:
    blocked = [s for s in real_blockpages if s.fingerprint == "e_unk_ru_blocked"]
    assert [s.id for s in blocked] == [
        "e_unk_ru_blocked",
        "e_unk_ru_blocked~2",
        "e_unk_ru_blocked~3",
    ]
    assert len({s.pattern for s in blocked}) == 3
    assert blocked[0].index < blocked[1].index < blocked[2].index


def test_real_signatures_all_use_the_re2_set(real_matcher: SignatureMatcher) -> None:
    assert len(real_matcher) == 1082
    assert real_matcher.fallback_signatures == ()


def test_every_real_pattern_can_fire(real_matcher: SignatureMatcher, long_page: str) -> None:
    """Each signature fires on a string generated from its own pattern, alone and in a page."""
    half = len(long_page) // 2
    not_generated, fired, silent, disagree = [], [], [], []
    for sig in real_matcher.signatures:
        text = example_for(sig.pattern)
        if text is None:
            not_generated.append(sig.id)
            continue
        if sig in real_matcher.match_all(text):
            fired.append(sig.id)
        else:
            silent.append(sig.id)
        embedded = long_page[:half] + text + long_page[half:]
        in_page = sig in real_matcher.match_all(embedded)
        if in_page != (re.search(sig.pattern, embedded, re.DOTALL) is not None):
            disagree.append(sig.id)
    assert not not_generated, f"hypothesis could not generate: {not_generated}"
    assert not silent, f"signatures that did not fire on their own example: {silent}"
    assert not disagree, f"differs from re.search inside long_blockpage.html: {disagree}"
    assert len(fired) == len(real_matcher.signatures) == 1082


def test_long_blockpage_matches_nothing(real_matcher: SignatureMatcher, long_page: str) -> None:
    assert real_matcher.match(long_page) is None
    assert real_matcher.match_all(long_page) == []


def _realish_pages(long_page: str, blockpages: list[Signature]) -> dict[str, str]:
    first_bp = example_for(blockpages[0].pattern) or ""
    last_bp = example_for(blockpages[-1].pattern) or ""
    half = len(long_page) // 2
    return {
        "long": long_page,
        "long+first_bp": long_page[:half] + first_bp + long_page[half:],
        "long+last_bp_at_end": long_page + last_bp,
        "bp_at_start+long": first_bp + long_page,
        "unicode": "Доступ ограничен 访问被拒绝 مرفوض 🚫 " + first_bp + " İıſK",
        "controls": "\x00\x01\x0b\x1c\x7f\x85\u2028" + last_bp + "\x00",
        "surrogates": "\ud800" + first_bp + "\udfff\ud83d\ude00",
        "crlf_http": "HTTP/1.1 403 Forbidden\r\nServer: nginx\r\n\r\n" + last_bp,
        "empty": "",
    }


def test_equivalent_to_python_re_on_realish_pages(
    real_matcher: SignatureMatcher,
    real_false_positives: list[Signature],
    real_blockpages: list[Signature],
    long_page: str,
) -> None:
    for name, page in _realish_pages(long_page, real_blockpages).items():
        expected_all = reference_all(real_false_positives, real_blockpages, page)
        assert real_matcher.match_all(page) == expected_all, name
        expected = reference_match(real_false_positives, real_blockpages, page)
        assert real_matcher.match(page) == expected, name
    # The injected pages really are blockpages, so the comparison is not vacuous.
    assert real_matcher.match(long_page[: len(long_page) // 2] + "FortiGuard Web Filtering")


def test_from_files_equals_constructor(real_matcher: SignatureMatcher) -> None:
    built = SignatureMatcher.from_files(_lines(BLOCKPAGE_FILE), _lines(FALSE_POSITIVE_FILE))
    assert built.signatures == real_matcher.signatures


def test_pickle_round_trip(real_matcher: SignatureMatcher) -> None:
    copy = pickle.loads(pickle.dumps(real_matcher))
    page = "<title>x</title> FortiGuard Web Filtering"
    assert copy.signatures == real_matcher.signatures
    assert copy.match(page) == real_matcher.match(page)
    assert copy.match(page) is not None


# ----------------------------------------------------------------------------- precedence


def test_false_positive_beats_blockpage() -> None:
    matcher = SignatureMatcher([fp(7, "Access denied by nginx")], [bp(0, "Access denied")])
    hit = matcher.match("<h1>Access denied by nginx</h1>")
    assert hit == PageMatch(False, fp(7, "Access denied by nginx"))
    assert matcher.match("<h1>Access denied</h1>") == PageMatch(True, bp(0, "Access denied"))


def test_lowest_index_wins_within_a_kind_regardless_of_input_order() -> None:
    blockpages = [bp(5, "denied"), bp(2, "Access"), bp(9, "Access denied")]
    false_positives = [fp(3, "nginx"), fp(1, "server")]
    matcher = SignatureMatcher(false_positives, blockpages)
    assert matcher.match("Access denied") == PageMatch(True, bp(2, "Access"))
    assert matcher.match("nginx server: Access denied") == PageMatch(False, fp(1, "server"))
    assert [s.id for s in matcher.match_all("nginx server: Access denied")] == [
        "f1",
        "f3",
        "b2",
        "b5",
        "b9",
    ]


def test_no_match() -> None:
    matcher = SignatureMatcher([fp(0, "nginx")], [bp(0, "Access denied")])
    assert matcher.match("Welcome to our site") is None
    assert matcher.match_all("Welcome to our site") == []
    assert SignatureMatcher([], []).match("anything") is None


def test_signatures_must_be_passed_in_the_right_slot() -> None:
    with pytest.raises(ValueError, match="kind"):
        SignatureMatcher([bp(0, "x")], [])
    with pytest.raises(ValueError, match="kind"):
        SignatureMatcher([], [fp(0, "x")])


# ----------------------------------------------------------------------------- Python fallback


LOOKAHEAD = r"Access(?= denied)"
BACKREF = r"<(b|i)>blocked</\1>"


def test_fallback_for_patterns_re2_rejects() -> None:
    matcher = SignatureMatcher([], [bp(0, LOOKAHEAD), bp(1, BACKREF), bp(2, "plain")])
    assert [s.pattern for s in matcher.fallback_signatures] == [LOOKAHEAD, BACKREF]
    assert matcher.match("Access denied") == PageMatch(True, bp(0, LOOKAHEAD))
    assert matcher.match("Access granted") is None
    assert matcher.match("<i>blocked</i>") == PageMatch(True, bp(1, BACKREF))
    assert matcher.match("<b>blocked</i>") is None
    assert [s.index for s in matcher.match_all("plain <b>blocked</b> Access denied")] == [0, 1, 2]


def test_fallback_and_set_share_one_precedence_order() -> None:
    fallback_fp = fp(4, r"nginx(?!\d)")
    set_fp = fp(2, "server")
    set_bp = bp(0, "denied")
    matcher = SignatureMatcher([fallback_fp, set_fp], [set_bp, bp(1, r"(a)\1")])
    assert matcher.match("nginx denied") == PageMatch(False, fallback_fp)
    assert matcher.match("nginx server denied") == PageMatch(False, set_fp)
    assert matcher.match("nginx2 denied") == PageMatch(True, set_bp)
    assert matcher.match("aa") == PageMatch(True, bp(1, r"(a)\1"))


def test_dfa_failure_is_answered_per_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the RE2 set's DFA gives up, no match is silently lost."""

    class ExhaustedSet:
        def Match(self, data: bytes) -> None:
            return None  # what re2.Set.Match returns when its DFA runs out of memory

    matcher = SignatureMatcher([fp(0, "nginx")], [bp(0, "denied"), bp(1, r"\w+ blocked")])
    monkeypatch.setattr(matcher, "_set", ExhaustedSet())
    assert matcher.match("Доступ blocked") == PageMatch(True, bp(1, r"\w+ blocked"))
    assert [s.id for s in matcher.match_all("nginx denied")] == ["f0", "b0"]
    assert matcher.match("nothing") is None
    assert matcher.dfa_failures == 3


def test_set_too_big_for_max_mem_falls_back_to_python_re() -> None:
    sigs = [bp(0, "Access denied"), bp(1, r"\w+ blocked")]
    matcher = SignatureMatcher([fp(0, "nginx")], sigs, max_mem=1000)
    assert len(matcher.fallback_signatures) == 3
    assert matcher.match("Доступ blocked") == PageMatch(True, sigs[1])
    assert matcher.match("nginx: Access denied") == PageMatch(False, fp(0, "nginx"))
    assert matcher.match("fine") is None
    copy = pickle.loads(pickle.dumps(matcher))
    assert len(copy.fallback_signatures) == 3


# ----------------------------------------------------------------------------- RE2 vs Python re

# Where RE2, read literally, disagrees with Python's re; the matcher must follow Python.
DIFFERENCES = [
    (r"\w+ограничен", "Доступ ограничен"),  # \w is Unicode in Python, ASCII in RE2
    (r"\d", "٣"),  # Arabic-Indic digit
    (r"a\sb", "a\x0bb"),  # RE2's \s lacks \v
    (r"a\sb", "a\x1cb"),
    (r"a\sb", "a\xa0b"),
    (r"a\Sb", "a\x0bb"),
    (r"(?i)i", "İ"),  # Python case folding differs from RE2's
    (r"(?i)i", "ı"),
    (r"(?i)[a-z]", "K"),  # Kelvin sign
    (r"(?i)straße", "STRASSE"),
    (r"(?i)ß", "ẞ"),
    (r"a{,2}b", "b"),  # Python: a{0,2}b; RE2: literal "a{,2}b"
    (r"a{,2}b", "a{,2}b"),
    (r"[[:alpha:]]", "x"),  # Python: set "[:alph" then "]"; RE2: POSIX class
    (r"[[:alpha:]]", ":]"),
    (r"end\Z", "the end"),  # RE2 spells it \z
    (r"end\Z", "the end\n"),
    (r"end$", "the end\n"),  # Python's $ also matches before a final newline
    (r"end$", "the end\n\n"),
    (r"\B", ""),  # Python 3.11's \B never matches an empty string
    (r"\bлок\b", "блокировка"),  # Unicode word boundary
    (r"\bлок\b", "a лок b"),
    (r"(?a)\bok\b", "éoké"),
    (r"(?m)^b$", "a\nb\nc"),
    (r"(?m)^$", "a\n"),
    (r"a.b", "a\nb"),  # DOTALL
    (r"a(?-s:.)b", "a\nb"),
    (r"(?x) a b  # comment", "ab"),
    (r"a.b", "a\ud800b"),  # a lone surrogate is one character
    (r"a[^x]b", "a\udfffb"),
    ("a\ud800b", "a\ud800b"),
    (r"a..b", "a\ud83d\ude00b"),  # two lone surrogates are two characters
    (r"a.b", "a\ud83d\ude00b"),
    (r"\x00\x01", "x\x00\x01y"),
    (r"[\u0400-\u04ff]{3}", "ДОС"),
]


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
@pytest.mark.parametrize(("pattern", "page"), DIFFERENCES)
def test_follows_python_re_where_re2_differs(pattern: str, page: str) -> None:
    sig = bp(0, pattern)
    matcher = SignatureMatcher([], [sig])
    expected = re.search(pattern, page, re.DOTALL) is not None
    assert (matcher.match(page) is not None) == expected
    assert (matcher.match_all(page) == [sig]) == expected


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
def test_unicode_classes_and_case_folding_stay_in_the_re2_set() -> None:
    translated = [r"\w+", r"(?i)straße", r"a{,2}b", r"[[:alpha:]]", r"end\Z", r"(?m)^$"]
    matcher = SignatureMatcher([], [bp(i, p) for i, p in enumerate(translated)])
    assert matcher.fallback_signatures == ()


def test_re2_only_syntax_is_accepted_with_re2_semantics() -> None:
    sigs = load_signatures(
        ['{"fingerprint": "greek", "pattern": "\\\\p{Greek}+ блок"}'], "blockpage"
    )
    matcher = SignatureMatcher([], sigs)
    assert matcher.match("λόγος блок") == PageMatch(True, sigs[0])
    assert matcher.match("logos блок") is None


_CHARS = ["a", "b", "A", "k", "K", "i", "İ", "ı", "s", "ſ", "ß", "Б", "б", "1", "٣", " "]
_CHARS += ["\n", "\x0b", "\x1c", "\xa0", "_", "\ud800", "😀", "-", "\x00", "{", ",", "2", "}"]
_ATOMS = [re.escape(c) for c in _CHARS] + [
    r"\d",
    r"\W",
    r"\s",
    r"\S",
    r"\b",
    r"\B",
    r"\A",
    r"\Z",
    "^",
    "$",
    ".",
    "[[:alpha:]]",
    r"[^\w\n]",
    r"[a-zБ-я]",
    r"[\d_-]",
    "(?=a)",
    r"(b)\1",
]
_QUANTIFIERS = ["", "", "", "*", "+", "?", "{,2}", "{2}", "{1,3}", "*?"]


@st.composite
def _patterns(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        choice = draw(st.integers(0, 5 if depth < 2 else 2))
        if choice <= 2:
            atom = draw(st.sampled_from(_ATOMS))
        elif choice == 3:
            atom = f"(?:{draw(_patterns(depth + 1))}|{draw(_patterns(depth + 1))})"
        else:
            flags = draw(st.sampled_from(["i", "-s", "m", "a", "-i", "ia"]))
            atom = f"(?{flags}:{draw(_patterns(depth + 1))})"
        parts.append(atom + draw(st.sampled_from(_QUANTIFIERS)))
    prefix = draw(st.sampled_from(["", "", "(?i)", "(?m)", "(?a)"])) if depth == 0 else ""
    return prefix + "".join(parts)


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    patterns=st.lists(_patterns(), min_size=1, max_size=4),
    pages=st.lists(st.text(alphabet=st.sampled_from(_CHARS), max_size=10), min_size=1, max_size=5),
)
def test_random_patterns_agree_with_python_re(patterns: list[str], pages: list[str]) -> None:
    valid = []
    for pattern in patterns:
        try:
            re.compile(pattern, re.DOTALL)
        except re.error:
            continue
        valid.append(pattern)
    blockpages = [bp(i, p) for i, p in enumerate(valid[::2])]
    false_positives = [fp(i, p) for i, p in enumerate(valid[1::2])]
    matcher = SignatureMatcher(false_positives, blockpages)
    for page in pages:
        assert matcher.match_all(page) == reference_all(false_positives, blockpages, page)
        assert matcher.match(page) == reference_match(false_positives, blockpages, page)


# ----------------------------------------------------------------------------- loading


def test_load_skips_blank_lines_and_indexes_non_blank_ones() -> None:
    lines = [
        '\ufeff{"fingerprint": "a", "pattern": "x"}\n',
        "\n",
        "   \t\n",
        '{"fingerprint": "b", "pattern": "y", "comment": "extra keys are fine"}\n',
        "",
        '{"fingerprint": "a", "pattern": "z"}',
    ]
    sigs = load_signatures(lines, "false_positive", "fp.json")
    assert sigs == [
        Signature("a", "a", "x", "false_positive", 0),
        Signature("b", "b", "y", "false_positive", 1),
        Signature("a~2", "a", "z", "false_positive", 2),
    ]


def test_generated_ids_never_collide_with_real_fingerprints() -> None:
    lines = [
        '{"fingerprint": "a", "pattern": "1"}',
        '{"fingerprint": "a", "pattern": "2"}',
        '{"fingerprint": "a~2", "pattern": "3"}',
        '{"fingerprint": "a", "pattern": "4"}',
    ]
    ids = [s.id for s in load_signatures(lines, "blockpage")]
    assert ids == ["a", "a~3", "a~2", "a~4"]


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"fingerprint": "x", "pattern": ', "invalid JSON"),
        ('["x", "y"]', "JSON object"),
        ('{"pattern": "y"}', "fingerprint"),
        ('{"fingerprint": 3, "pattern": "y"}', "fingerprint"),
        ('{"fingerprint": "x"}', "pattern"),
        ('{"fingerprint": "x", "pattern": null}', "pattern"),
        ('{"fingerprint": "x", "pattern": ""}', "pattern"),
        ('{"fingerprint": "x", "pattern": "(unclosed"}', "does not compile"),
        ('{"fingerprint": "x", "pattern": "a{2,1}"}', "does not compile"),
        ('{"fingerprint": "x", "pattern": "(?<=a+)b"}', "look-behind requires fixed-width"),
    ],
)
def test_malformed_line_reports_label_and_line_number(bad_line: str, reason: str) -> None:
    lines = ['{"fingerprint": "ok", "pattern": "fine"}', "", bad_line, ""]
    with pytest.raises(SignatureFileError, match=rf"^bp\.json:3: .*{reason}") as info:
        load_signatures(lines, "blockpage", label="bp.json")
    assert info.value.line == 3
    assert info.value.label == "bp.json"
    assert isinstance(info.value, ValueError)


def test_matcher_rejects_a_pattern_neither_engine_compiles() -> None:
    with pytest.raises(ValueError, match=r"'b0'.*does not compile"):
        SignatureMatcher([], [bp(0, "(?<=a+)b")])


def test_error_pickles() -> None:
    error = SignatureFileError("bp.json", 4, "invalid JSON")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.label, copy.line) == ("bp.json:4: invalid JSON", "bp.json", 4)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        load_signatures(['{"fingerprint": "a", "pattern": "x"}'], "blockpages")


def test_signature_pickles() -> None:
    sig = bp(3, "x")
    assert pickle.loads(pickle.dumps(sig)) == sig


def test_every_code_point_is_each_code_point_once_in_order() -> None:
    """The string the Unicode class ranges are computed over: U+0000..U+10FFFF, lone
    surrogates included (a gap or a swapped pair would shift the ranges)."""
    from services.beam_launcher.enrichment.signatures import _every_code_point

    text = _every_code_point()
    assert len(text) == sys.maxunicode + 1
    assert all(ord(ch) == i for i, ch in enumerate(text))
