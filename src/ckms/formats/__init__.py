"""Package definition formats, each parsed into the one package model.

``ckms.ini`` is static: it is read once and the package is the same for every
kernel.  ``dkms.conf`` is shell that DKMS sources for each kernel, so a
dkms.conf package is only known for a given kernel: loading one evaluates the
file (as an unprivileged user, with a time limit) with that kernel's
variables.  ``LoadOptions`` carries what the evaluation needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ..errors import ConfigError
from ..model import Package
from .ckms_ini import load_ckms_ini

if TYPE_CHECKING:
    from ..kernel import Kernel

DEFINITION_NAMES = ("ckms.ini", "dkms.conf")


@dataclass(frozen=True)
class LoadOptions:
    """What evaluating a dkms.conf needs besides the file (unused for ckms.ini)."""

    kernel: Optional[Kernel] = None  # None: the running kernel
    dkms_tree: Path = Path("/var/lib/dkms")
    source_tree: Path = Path("/usr/src")
    install_tree: Path = Path("/lib/modules")
    etc_dir: Path = Path("/etc/dkms")  # per-module override files <module>.conf...
    run_as: Optional[Tuple[int, int]] = None  # (uid, gid); None: the tree's owner, never root
    timeout: float = 30.0
    os_root: Path = Path("/")  # where etc/os-release says which distribution DKMS would see
    directives: Tuple[Tuple[str, str], ...] = ()  # (NAME or NAME[i], value): dkms --directive


def find_definition(srcdir: Path) -> Path:
    """The package definition in a source tree (ckms.ini wins over dkms.conf)."""
    for name in DEFINITION_NAMES:
        cand = srcdir / name
        if cand.is_file():
            return cand
    raise ConfigError(f"{srcdir}: no {' or '.join(DEFINITION_NAMES)} found; "
                      "pass the definition with -c FILE")


def load_definition(path: Path, warn: Callable[[str], None],
                    opts: Optional[LoadOptions] = None) -> Package:
    if is_dkms_conf(path):
        from .dkms_conf import load_dkms_conf
        return load_dkms_conf(path, warn, opts or LoadOptions())
    return load_ckms_ini(path, warn)


def is_dkms_conf(path: Path) -> bool:
    """dkms.conf (shell) rather than ckms.ini: by name, else by content."""
    if path.name == "dkms.conf":
        return True
    if path.suffix == ".ini":
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return not any(line.strip().lower() == "[general]" for line in fh)
    except OSError:
        return False
