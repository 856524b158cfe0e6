"""Expected failures, each with a documented exit code.

Every error a user can cause or fix is one of these; the front ends print the
message (no traceback) and exit with the class's code.  The codes are listed
in ckms(8) under EXIT STATUS.
"""

from __future__ import annotations


class CkmsError(Exception):
    """An expected failure: one message saying what, where and what to do."""

    code = 1  # an operation failed (install/remove hooks, depmod, compression, I/O)


class UsageError(CkmsError):
    """Bad command line: unknown command, bad NAME=VERSION, bad option value."""

    code = 2


class ConfigError(CkmsError):
    """A package definition or the global configuration is missing or invalid."""

    code = 3


class StateError(CkmsError):
    """The command does not fit the package's state (not added, not built...)."""

    code = 4


class KernelError(CkmsError):
    """The target kernel cannot be built for: headers missing, unusable."""

    code = 5


class PermissionProblem(CkmsError):
    """The command needs root, or privileges could not be dropped."""

    code = 6


class LockTimeout(CkmsError):
    """Another ckms process held the state tree's lock for too long."""

    code = 7


class BuildFailed(CkmsError):
    """A build hook or make failed; the logs are kept."""

    code = 8

    def __init__(self, message: str, logdir: str | None = None) -> None:
        super().__init__(message)
        self.logdir = logdir


class ModuleMissing(BuildFailed):
    """The build ran but did not produce a module the package declares."""

    def __init__(self, message: str, logdir: str | None = None, module: str = "") -> None:
        super().__init__(message, logdir)
        self.module = module  # the file name, e.g. foo.ko


class Skipped(CkmsError):
    """The package is not for this kernel (BUILD_EXCLUSIVE, OBSOLETE_BY, disabled)."""

    code = 9
