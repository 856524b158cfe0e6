"""Where things are: DKMS's defaults, framework.conf, then the command line."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from .args import Invocation

DKMS_TREE = Path("/var/lib/dkms")
SOURCE_TREE = Path("/usr/src")
INSTALL_TREE = Path("/lib/modules")
MOK_KEY = Path("/var/lib/dkms/mok.key")  # DKMS's defaults, whatever --dkmstree says
MOK_CERT = Path("/var/lib/dkms/mok.pub")


@dataclass(frozen=True)
class Locations:
    dkms_tree: Path
    source_tree: Path
    install_tree: Path
    mok_key: Path
    mok_cert: Path
    jobs: int  # framework.conf's parallel_jobs; 0: not set


def framework_files(etc_dir: Path) -> List[Path]:
    """framework.conf, then framework.conf.d/*.conf in order, as DKMS sources them."""
    files = [etc_dir / "framework.conf"]
    with contextlib.suppress(OSError):
        files += sorted((etc_dir / "framework.conf.d").glob("*.conf"))
    return [f for f in files if f.is_file()]


def _sets_anything(path: Path) -> bool:
    """False for a file of comments and blank lines only (the packaged framework.conf)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return any(line.strip() and not line.lstrip().startswith("#") for line in fh)
    except OSError:
        return False


def read_framework(etc_dir: Path, warn: Callable[[str], None]) -> Dict[str, str]:
    """framework.conf's variables; evaluated (by bash, unprivileged) only when it sets any."""
    if not any(_sets_anything(f) for f in framework_files(etc_dir)):
        return {}
    from ..formats.dkms_conf import load_framework
    return load_framework(etc_dir, warn)


def locations(inv: Invocation, framework: Dict[str, str]) -> Locations:
    def path(given: object, key: str, default: Path) -> Path:
        chosen = given if isinstance(given, Path) else Path(framework.get(key) or default)
        return chosen.absolute()

    jobs = framework.get("parallel_jobs", "")
    return Locations(
        dkms_tree=path(inv.dkms_tree, "dkms_tree", DKMS_TREE),
        source_tree=path(inv.source_tree, "source_tree", SOURCE_TREE),
        install_tree=path(inv.install_tree, "install_tree", INSTALL_TREE),
        mok_key=Path(framework.get("mok_signing_key") or MOK_KEY),
        mok_cert=Path(framework.get("mok_certificate") or MOK_CERT),
        jobs=int(jobs) if jobs.isdigit() else 0,
    )
