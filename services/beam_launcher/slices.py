"""Input files as slices of consecutive lines: the unit of work of the local runner.

A large file is cut into ``count`` slices so several worker processes parse it at once;
every line belongs to exactly one slice and keeps its 1-based line number in the file.

This first version plans one slice per file (``count`` is accepted, not yet used) and
reads it with :func:`services.common.storage.open_text_lines`.

Example:
    >>> from services.beam_launcher.processing import FileTask
    >>> task = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")
    >>> [(s.index, s.count) for s in plan_slices(task, 2)]
    [(0, 1)]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from services.beam_launcher.processing import FileTask
from services.common import storage


@dataclass(frozen=True, slots=True)
class FileSlice:
    """Slice ``index`` of ``count`` of one input file."""

    task: FileTask
    index: int
    count: int


def plan_slices(task: FileTask, count: int) -> list[FileSlice]:
    """The slices of ``task`` when up to ``count`` workers may share it."""
    return [FileSlice(task, 0, 1)]


def iter_slice_batches(piece: FileSlice, batch_lines: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, lines)`` batches of the slice's lines, line ends kept.

    Raises what the storage layer raises when the file cannot be read to its end; the
    batches read before that have been yielded.
    """
    batch: list[bytes] = []
    first = line_no = 1
    try:
        with storage.open_text_lines(piece.task.url) as fh:
            for line in fh:
                batch.append(line)
                if len(batch) >= batch_lines:
                    yield first, batch
                    first, batch = line_no + 1, []
                line_no += 1
    except Exception:
        if batch:
            yield first, batch
        raise
    if batch:
        yield first, batch
