"""Human output: one style for progress, warnings and errors."""

from __future__ import annotations

import os
import sys
from typing import IO, Callable, Optional

from .errors import CkmsError


class Output:
    def __init__(self, quiet: bool = False, color: Optional[bool] = None,
                 stream: IO[str] = sys.stdout, errstream: IO[str] = sys.stderr,
                 prog: str = "ckms") -> None:
        if color is None:
            color = stream.isatty() and "NO_COLOR" not in os.environ
        self.quiet = quiet
        self.color = color
        self.stream = stream
        self.errstream = errstream
        self.prog = prog
        self._warned: set[str] = set()  # a definition read for each kernel warns once

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[m" if self.color else text

    def info(self, msg: str) -> None:
        self.stream.write(self._paint(f"=> {self.prog}: {msg}", "1") + "\n")
        self.stream.flush()

    def warn(self, msg: str) -> None:
        if msg in self._warned:
            return
        self._warned.add(msg)
        self.stream.flush()
        self.errstream.write(self._paint(f"{self.prog}: warning: {msg}", "1;33") + "\n")
        self.errstream.flush()

    def error(self, msg: str) -> None:
        self.stream.flush()
        self.errstream.write(self._paint(f"{self.prog}: error: {msg}", "1;31") + "\n")
        self.errstream.flush()

    def echo(self) -> Optional[IO[str]]:
        """Where build output is copied to (None when quiet)."""
        return None if self.quiet else self.stream


def failure_code(out: Output, exc: BaseException,
                 code: Callable[[CkmsError], int] = lambda e: e.code) -> int:
    """Report an expected failure (no traceback); the exit status the front end returns."""
    if isinstance(exc, CkmsError):
        out.error(str(exc))
        return code(exc)
    if isinstance(exc, OSError):  # e.g. a destdir the state owner cannot write to, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        out.error(f"{where}{exc.strerror or exc}")
        return 1
    if isinstance(exc, KeyboardInterrupt):
        out.error("interrupted")
        return 130
    raise exc
