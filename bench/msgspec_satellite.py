"""Satellite v2.2 ``results.json`` lines → the rows of ``parse_observation_batch``, via msgspec.

The alternative to ``services/beam_launcher/native/_satfast.c`` measured for issue 16:
each line is decoded into the ``SatRecord`` Struct of ``msgspec_structs`` and flattened by
lean Python into the same row dicts (same keys, values and order, ``_row_id`` and
``_warnings`` included) as ``satellite_batch.parse_observation_batch``. Like the C path it
does no classification (Satellite outcomes come later, per scan). Shared with the C path:
nothing but the reference path (``satellite_batch._python_line``) for every line the fast
path does not take (invalid JSON, a type the Structs do not allow, a record that is not
the ordinary v2.2 shape, anything raising); shared with the pure-Python path:
``satellite.go_timestamp`` (the C path has its own). Non-ASCII lines are checked to be
valid UTF-8 first, as in ``msgspec_hyperquack``, which also describes the one known
difference (``1e999`` in a skipped key).
"""

from __future__ import annotations

import gc

import msgspec
from msgspec import UNSET
from msgspec_structs import SatRecord

from services.beam_launcher.hyperquack.parse import file_digest
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.satellite import parse as satellite
from services.beam_launcher.satellite.batch import _python_line
from services.beam_launcher.satellite.parse import (
    _CONTROL_RESOLVER_FILES,
    _MATCH_TAGS,
    _MATCHES_CONTROL_FIELDS,
    _REPEATED_ANSWER_FIELDS,
    _ROW_TEMPLATE,
    ANSWER_FIELDS,
    CONTROL_DOMAINS,
    CONTROL_IPS,
    V2_2,
    go_timestamp,
)
from services.common.rowschema import Row

_ANSWER_TEMPLATE = dict.fromkeys(ANSWER_FIELDS)
_NO_MATCHES = dict.fromkeys(_MATCHES_CONTROL_FIELDS, False)
_MISMATCH = "confidence_matches_length_mismatch"


def _as_int(value: int | str | None) -> int | None:
    """``satellite._opt_int``: an int, or a string of digits (else ValueError)."""
    if value is None or type(value) is int:
        return value
    assert isinstance(value, str)
    return int(value.strip())


class MsgspecSatellite:
    """``parse_observation_batch`` for v2.2 ``results.json`` with msgspec decoding."""

    def __init__(self) -> None:
        self.decoder = msgspec.json.Decoder(SatRecord)
        #: Lines handed to the reference path (the C path's "slow" lines).
        self.slow_lines = 0

    def _rows(
        self, raw: bytes, line_no: int, digest: str, task: FileTask, trusted: bool
    ) -> list[Row] | None:
        """The rows of one line, or None when the reference must handle it."""
        if not raw.isascii():
            raw.decode("utf-8")  # UnicodeDecodeError: the reference's invalid_json
        rec = self.decoder.decode(raw)
        vp, test_url, responses = rec.vp, rec.test_url, rec.response
        passed = rec.passed_liveness
        if vp is None or test_url is None or responses is None or passed is UNSET:
            return None
        start = rec.start_time
        if start is None or not start.strip():
            return None
        date, start_iso = go_timestamp(start, "start_time")
        end = rec.end_time
        end_iso = None if end is None or not end.strip() else go_timestamp(end, "end_time")[1]
        conf = rec.confidence
        average = matches = untagged_controls = untagged_response = None
        if conf is not None:
            average = conf.average
            matches = conf.matches
            untagged_controls, untagged_response = conf.untagged_controls, conf.untagged_response
        reasons = rec.exclude_reason
        mid = f"{digest}{line_no:08x}"
        base = _ROW_TEMPLATE.copy()
        base["resolver_ip"] = vp
        base["resolver_is_trusted"] = trusted or vp in CONTROL_IPS
        base["measurement_id"] = mid
        base["source"] = task.source
        base["source_file"] = task.source_file
        base["source_line"] = line_no
        base["pipeline_version"] = task.pipeline_version
        base["_format"] = V2_2
        location = rec.location
        if location is not None:
            base["resolver_country"] = location.country_code or None
        base["date"] = date
        base["start_time"] = start_iso
        base["end_time"] = end_iso
        base["anomaly"] = rec.anomaly
        base["domain_controls_failed"] = None if passed is None else not passed
        base["untagged_controls"] = untagged_controls
        base["untagged_response"] = untagged_response
        base["excluded"] = rec.excluded
        base["exclude_reason"] = None if reasons is None else " ".join(reasons)
        rows: list[Row] = []
        retry = 0
        for index, rt in enumerate(responses):
            domain = rt.url or test_url
            rcode = rt.rcode
            if type(rcode) is not int:
                if not isinstance(rcode, str):
                    return None
                rcode = int(rcode.strip())  # ValueError: the reference's invalid_rcode
            answers = []
            inner = rt.response
            if inner:
                for ip, tags in inner.items():
                    answer = _ANSWER_TEMPLATE.copy()
                    answer["ip"] = ip
                    for name in _REPEATED_ANSWER_FIELDS:
                        answer[name] = []
                    answer["censys_http_body_hash"] = tags.http or None
                    answer["censys_ip_cert"] = tags.cert or None
                    answer["asn"] = _as_int(tags.asnum)
                    answer["as_name"] = tags.asname or None
                    matched = tags.matched
                    if matched is not None:
                        found = _NO_MATCHES.copy()
                        for tag in matched:
                            field = _MATCH_TAGS.get(tag)
                            if field is not None:
                                found[field] = True
                        answer["matches_control"] = found
                    answers.append(answer)
            is_control = domain.lower().rstrip(".") in CONTROL_DOMAINS
            row = base.copy()
            row["domain"] = domain
            row["domain_is_control"] = is_control
            if is_control:
                row["retry"] = None
            else:
                row["retry"] = retry
                retry += 1
            row["received_rcode"] = rcode
            error = rt.error
            row["received_error"] = None if not error or error == "null" else error
            row["success"] = rcode == 0
            row["answers"] = answers
            row["has_type_a"] = True if rcode == 0 and rt.has_type_a else None
            if answers:
                row["average_confidence"] = average
                if matches is not None:
                    if len(matches) == len(answers):
                        for answer, match in zip(answers, matches, strict=True):
                            answer["match_confidence"] = match
                    else:
                        row["_warnings"] = [_MISMATCH]
            row["_row_id"] = f"{mid}:{index}"
            rows.append(row)
        return rows

    def parse_observation_batch(
        self,
        task: FileTask,
        first: int,
        lines: list[bytes],
        stats: dict[str, int],
        dead: list[Row],
    ) -> list[Row]:
        """What ``satellite_batch.parse_observation_batch`` returns for these lines.

        The cyclic GC is paused during the batch, as ``_satfast.c`` does (collections
        triggered by the batch's new rows would only re-walk live objects).
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            out = self._batch(task, first, lines, stats, dead)
        finally:
            if enabled:
                gc.enable()
        # Every kept row's _warnings, counted as the reference does (slow lines' rows too).
        for row in out:
            for code in row.get("_warnings", ()):
                key = f"row_warnings.{code}"
                stats[key] = stats.get(key, 0) + 1
        return out

    def _batch(
        self,
        task: FileTask,
        first: int,
        lines: list[bytes],
        stats: dict[str, int],
        dead: list[Row],
    ) -> list[Row]:
        digest = file_digest(task.source, task.source_file)
        trusted = satellite._base_name(task.source_file) in _CONTROL_RESOLVER_FILES
        out: list[Row] = []
        ctx = None
        n_lines = n_rows = 0
        rows_of = self._rows
        for offset, raw in enumerate(lines):
            line = raw.rstrip(b"\r\n")
            rows: list[Row] | None = None
            if line.strip():
                try:
                    rows = rows_of(line, first + offset, digest, task, trusted)
                except Exception:  # bad JSON or shape, a surprise: the reference decides
                    rows = None
            if rows is None:  # blank lines too: the reference counts them
                self.slow_lines += line.strip() != b""
                ctx = ctx or task.context()
                _python_line(task, ctx, first + offset, raw, None, out, stats, dead)
                continue
            n_lines += 1
            n_rows += len(rows)
            out += rows
        if n_lines:
            stats["lines"] = stats.get("lines", 0) + n_lines
            stats["rows"] = stats.get("rows", 0) + n_rows
        return out
