"""Files that cannot be decoded (images, clips): skipped, counted, listed in skipped.txt, and
the source refused when too many of them are damaged."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from ..errors import UserError

WARN_FIRST = 5  # bad files named on stderr; the rest are only listed in skipped.txt


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class BadImages:
    """Items (images or clips) that cannot be decoded: skipped, counted and listed. When more than
    `max_fraction` of the source's `total` items are bad, the source is refused (wrong folder,
    broken copy). Items skipped for another reason (a clip too short) are listed, not counted."""

    def __init__(self, source: str, total: int, max_fraction: float, warn: Callable[[str], None] = _warn,
                 noun: str = "image"):
        self.source, self.total, self.max_fraction, self.warn, self.noun = source, total, max_fraction, warn, noun
        self.found: dict[Path, str] = {}
        self.skipped: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.found) + len(self.skipped)

    def add(self, path: Path, reason: str) -> None:
        if path in self.found:
            return
        self.found[path] = reason
        self.check()
        self._say(f"skipped unreadable {self.noun} '{path}': {reason}")

    def skip(self, path: Path, reason: str) -> None:
        """List an item left out for a reason other than damage (it does not count as bad)."""
        if path not in self.skipped:
            self.skipped[path] = reason
            self._say(f"skipped {self.noun} '{path}': {reason}")

    def _say(self, message: str) -> None:
        shown = len(self)
        if shown <= WARN_FIRST:
            more = "" if shown < WARN_FIRST else " (further ones are only listed in skipped.txt)"
            self.warn(message + more)

    def check(self) -> None:
        if len(self.found) > self.max_fraction * self.total:
            path, reason = next(iter(self.found.items()))
            raise UserError(
                f"{len(self.found)} of {self.total} {self.noun}s of '{self.source}' cannot be decoded, more than "
                f"data.max_bad_fraction={self.max_fraction:g} (first: '{path}': {reason}); "
                f"repair or remove them, or raise data.max_bad_fraction"
            )

    def lines(self) -> str:
        both = {**self.found, **self.skipped}
        return "".join(f"{path}\t{reason}\n" for path, reason in both.items())
