"""Progress reporting as an injected object: the library never touches a terminal.

One interface, two views. A :class:`Progress` receives the events of a whole run (many tasks: one per
resource, or per blob pushed); the code doing one task's work (a download, unpacking and hashing, an
upload) sees only a :class:`Meter`, usually a :class:`TaskMeter` bound to its task.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class Meter(Protocol):
    """One task's progress, as the code doing its work reports it."""

    def total(self, nbytes: int | None) -> None:
        """The task's size became known (e.g. from Content-Length), or unknown again."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more were processed (negative after a restart)."""


@dataclass(frozen=True)
class TaskMeter:
    """A :class:`Meter` reporting to the task ``task`` of ``progress``."""

    progress: Progress
    task: str

    def total(self, nbytes: int | None) -> None:  # noqa: D102
        self.progress.update_total(self.task, nbytes)

    def advance(self, nbytes: int) -> None:  # noqa: D102
        self.progress.advance(self.task, nbytes)
