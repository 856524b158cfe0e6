"""The DKMS-compatible front end (``ckms-dkms``), see ckms-dkms(8).

``args`` reads DKMS 3.x's command line, ``status`` derives DKMS's status
lines from the tree with stat/readlink only, ``actions`` maps each DKMS action
onto the same operations the ``ckms`` command uses.  ``ckms.dkms_cli`` is the
entry point.
"""

from __future__ import annotations

import sys
from typing import IO, Optional

from ..errors import BuildFailed, CkmsError, ConfigError, KernelError, Skipped, UsageError
from ..ui import Output

DKMS_VERSION = "3.0.10"  # the DKMS whose command language and output this front end speaks


class DkmsError(CkmsError):
    """A failure with DKMS's exit code and DKMS's message (one line per list item)."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.code = code


class DkmsOutput(Output):
    """DKMS's style: plain progress lines, ``Warning:`` and ``Error!`` on stderr.

    Build output is copied to the terminal only with --verbose (DKMS keeps it
    in make.log); --quiet silences everything, as DKMS's ``exec >/dev/null``.
    """

    def __init__(self, verbose: bool = False, stream: Optional[IO[str]] = None,
                 errstream: Optional[IO[str]] = None) -> None:
        super().__init__(quiet=not verbose, color=False, stream=stream or sys.stdout,
                         errstream=errstream or sys.stderr, prog="ckms-dkms")

    def info(self, msg: str) -> None:
        self.stream.write(msg + "\n")
        self.stream.flush()

    def warn(self, msg: str) -> None:
        if msg not in self._warned:  # once, as Output does: dkms.conf is read for each kernel
            self._warned.add(msg)
            self.notice("Warning: " + msg)

    def error(self, msg: str) -> None:
        self.notice("Error! " + msg)

    def notice(self, msg: str) -> None:
        """A message on stderr without a prefix (DKMS's ``echo >&2``)."""
        self.stream.flush()
        self.errstream.write(msg + "\n")
        self.errstream.flush()


def exit_code(exc: CkmsError) -> int:
    """DKMS's exit status for a failure of ckms's operations."""
    if isinstance(exc, DkmsError):
        return exc.code
    for cls, code in ((Skipped, 77), (KernelError, 21), (BuildFailed, 10), (ConfigError, 8),
                      (UsageError, 2)):
        if isinstance(exc, cls):
            return code
    return 1
