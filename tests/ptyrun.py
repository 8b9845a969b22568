"""Run the installed CLI on a real pseudo-terminal, as a person would, and collect what it drew.

Off a terminal (pipes, CI, the rest of the suite) the CLI takes other paths: no progress bars, no
colour, no cursor handling. These tests see what a person sees.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

CLI = str(Path(sys.executable).parent / "modelsync")


@dataclass
class PtyResult:
    """Exit code and every byte the program wrote to its terminal."""

    code: int
    raw: bytes

    @property
    def text(self) -> str:
        """The output decoded, with carriage returns removed."""
        return self.raw.decode("utf-8", "replace").replace("\r", "")


def run_on_pty(args: list[str], *, cwd: Path, env: dict[str, str], columns: int = 80, rows: int = 40,
               timeout: float = 60.0, interrupt_when: bytes | None = None,
               interrupt_after: float | None = None) -> PtyResult:
    """Run ``modelsync ARGS`` with stdin, stdout and stderr on a new pty of the given size.

    ``interrupt_when``: send SIGINT to the program's process group (as Ctrl-C does) once these bytes
    appear in its output; ``interrupt_after``: or after that many seconds. A program still running at
    ``timeout`` is killed and the test fails on its exit code (-9), never hangs.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    full_env = {**env, "TERM": env.get("TERM", "xterm-256color"), "COLUMNS": str(columns), "LINES": str(rows)}
    full_env.pop("CI", None)  # a person's terminal, not a CI log
    # As in a terminal's foreground job, Ctrl-C must reach Python: a CI runner (or a shell's background
    # job) may start us with SIGINT ignored, and children inherit that.
    proc = subprocess.Popen([CLI, *args], cwd=cwd, env=full_env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, close_fds=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out = bytearray()
    started = time.monotonic()
    interrupted = False
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the program closed its end of the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
            due = (interrupt_when is not None and interrupt_when in out) or \
                (interrupt_after is not None and time.monotonic() - started > interrupt_after)
            if due and not interrupted:
                interrupted = True
                os.killpg(proc.pid, signal.SIGINT)
            if time.monotonic() - started > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
    return PtyResult(code, bytes(out))
