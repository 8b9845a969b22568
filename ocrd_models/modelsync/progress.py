"""Progress reporting as an injected callback object: the library never touches a terminal."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress events; implementations must be thread-safe."""

    def start(self, task: str, total: int | None) -> None:
        """A task (one resource) begins; ``total`` bytes if known."""

    def update_total(self, task: str, total: int | None) -> None:
        """The size became known (e.g. from Content-Length)."""

    def advance(self, task: str, nbytes: int) -> None:
        """``nbytes`` more were processed (negative after a restart)."""

    def finish(self, task: str, ok: bool, message: str) -> None:
        """A task ended."""

    def note(self, message: str) -> None:
        """A one-line notice for the user."""


class NullProgress:
    """Discards every event."""

    def start(self, task: str, total: int | None) -> None:  # noqa: D102
        pass

    def update_total(self, task: str, total: int | None) -> None:  # noqa: D102
        pass

    def advance(self, task: str, nbytes: int) -> None:  # noqa: D102
        pass

    def finish(self, task: str, ok: bool, message: str) -> None:  # noqa: D102
        pass

    def note(self, message: str) -> None:  # noqa: D102
        pass
