"""A suite that failed part-way still reports the figures it measured before the failure."""

from __future__ import annotations

from moonshard.bench.measure import Figure

__all__ = ["PartialRun"]


class PartialRun(Exception):
    """Raised by a suite whose later part failed: ``figures`` were measured before it."""

    def __init__(self, figures: list[Figure], part: str, cause: BaseException) -> None:
        super().__init__(f"{part} failed: {type(cause).__name__}: {cause}")
        self.figures = figures
