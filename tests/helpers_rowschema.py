"""Nested test columns shared by the row-schema tests (tests/test_rowschema*.py)."""

from __future__ import annotations

from services.common.rowschema import (
    BYTES,
    DATE,
    RECORD,
    REPEATED,
    STRING,
    TIMESTAMP,
    Column,
)


def answer_columns(repeated: Column) -> tuple[Column, Column]:
    """``answer`` (a RECORD of ip, seen and ``repeated``) and ``answers`` (REPEATED raw, day)."""
    answer = Column(
        "answer",
        RECORD,
        "One answer",
        fields=(Column("ip", STRING, "IP"), Column("seen", TIMESTAMP, "When"), repeated),
    )
    answers = Column(
        "answers",
        RECORD,
        "All answers",
        REPEATED,
        fields=(Column("raw", BYTES, "Raw"), Column("day", DATE, "Day")),
    )
    return answer, answers
