"""DKMS's module version sanity check, run before a module is installed.

DKMS (``check_version_sanity``) refuses to install a module when the
kernel's module directory already holds a module of the same file name that
is newer, or identical, unless ``--force`` is given; with several same-named
modules it cannot tell which one counts and lets the install go on with a
warning.  Versions come from the real ``modinfo`` (``version:`` and
``srcversion:``, compressed modules included) and are compared number by
number (``1.10`` is newer than ``1.9``).  Identical means the same version
and srcversion, or, for modules without either, the same bytes (DKMS 3.1 on;
3.0.10 also refused a same version with another srcversion, which blocks
upgrading unversioned modules).  The messages are 3.0.10's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List

from .dkms.status import same_module
from .kernel import COMPRESSIONS
from .model import version_key
from .run import run_quiet

MODULE_SUFFIXES = (".ko", *(".ko" + sfx for sfx in COMPRESSIONS.values()))


@dataclass(frozen=True)
class VerInfo:
    version: str
    srcversion: str  # or the obsolete checksum after the version


@dataclass(frozen=True)
class Verdict:
    """The outcome for one module: may it be installed, and what to tell."""

    ok: bool
    message: str = ""
    kind: str = ""  # "warning", "error" (DKMS's Error! lines) or "notice" (plain stderr)


def modinfo(path: Path) -> VerInfo:
    """version and srcversion of a module file, as DKMS's get_module_verinfo reads them."""
    ver = src = checksum = ""
    for line in run_quiet(["modinfo", str(path)]).stdout.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if key == "version" and words:
            ver = words[0]
            checksum = words[1] if len(words) > 1 else ""
        elif key == "srcversion" and words:
            src = words[0]
    return VerInfo(ver, src or checksum)


def compare(first: VerInfo, second: VerInfo) -> str:
    """'==' same version and srcversion, '=' same version, '>' first newer, '<' older, '?'."""
    if first.version == second.version:
        return "==" if first.srcversion == second.srcversion else "="
    if not first.version or not second.version:
        return "?"
    return ">" if version_key(first.version) > version_key(second.version) else "<"


def same_named(kernel_dir: Path, name: str) -> List[Path]:
    """Every module file called NAME.ko (in any compression) under the kernel's module dir."""
    wanted = {name + sfx for sfx in MODULE_SUFFIXES}
    found: List[Path] = []
    for dirpath, _dirs, files in os.walk(kernel_dir):  # does not follow build/ and source/
        found.extend(Path(dirpath, f) for f in files if f in wanted)
    return sorted(found)


def check(kernel_dir: Path, kver: str, ours: Path, name: str, suffix: str,
          force: bool = False, override: bool = False) -> Verdict:
    """May the module file ``ours`` be installed as NAME into kernel_dir (kernel kver)?

    ``suffix`` is the kernel's module compression (for the messages, as DKMS
    prints them); ``override`` is DKMS's --force-version-override: no check.
    """
    existing = same_named(kernel_dir, name)
    if not existing or override:
        return Verdict(True)
    if len(existing) > 1:
        return Verdict(True, f"Warning! Cannot do version sanity checking because multiple "
                             f"{name}.ko{suffix}\nmodules were found in kernel {kver}.", "warning")
    if force:
        return Verdict(True)
    theirs, mine = modinfo(existing[0]), modinfo(ours)
    result = compare(theirs, mine)
    if result == ">":
        return Verdict(False, f"Module version {mine.version} for {name}.ko{suffix}\n"
                              f"is not newer than what is already found in kernel {kver} "
                              f"({theirs.version}).\nYou may override by specifying --force.",
                       "error")
    if result == "==" and (mine.version or mine.srcversion or same_module(str(existing[0]), str(ours))):
        return Verdict(False, f"Module version {mine.version} for {name}.ko{suffix}\n"
                              f"exactly matches what is already found in kernel {kver}.\n"
                              "DKMS will not replace this module.\n"
                              "You may override by specifying --force.", "notice")
    return Verdict(True)
