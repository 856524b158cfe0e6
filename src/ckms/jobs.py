"""One job budget for every build of a command: a GNU make jobserver.

ckms creates the jobserver (a pipe holding one token per job slot) and hands
it to every make it starts through ``MAKEFLAGS``.  Each running build holds one
token for make's own implicit slot (taken by the scheduler before the build
starts); make takes more tokens from the pipe for parallel jobs and gives them
back.  So however many builds run at once, at most ``slots`` compiler jobs run.
"""

from __future__ import annotations

import contextlib
import os
import select
from typing import Dict, Iterator, Tuple


class JobServer:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a job server needs at least one slot")
        self.slots = slots
        self._read, self._write = os.pipe()
        os.write(self._write, b"+" * slots)

    @property
    def fds(self) -> Tuple[int, int]:
        return self._read, self._write

    def env(self) -> Dict[str, str]:
        """What a make started under this job server needs in its environment."""
        auth = f"{self._read},{self._write}"
        return {"MAKEFLAGS": f"-j{self.slots} --jobserver-auth={auth} --jobserver-fds={auth}"}

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one token (a build's implicit slot) while the block runs."""
        while True:  # GNU make sets the shared pipe non-blocking: wait until a token is there
            select.select([self._read], [], [])
            try:
                if os.read(self._read, 1):
                    break
            except BlockingIOError:  # another build took the token first
                continue
        try:
            yield
        finally:
            os.write(self._write, b"+")

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> JobServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
