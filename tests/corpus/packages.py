"""Real Debian bookworm ``*-dkms`` packages for the corpus test.

A package is fetched with ``apt-get download`` (works without root) into a
cache directory (``$CKMS_TEST_CACHE``, default ``/var/cache/ckms-tests/debs``;
a ``.deb`` already there is reused) and unpacked with ``dpkg-deb -x`` into a
directory the caller chooses: its source is ``usr/src/<name>-<version>/``
there, with the ``dkms.conf``.  Nothing here installs a package: a ``*-dkms``
postinst would run DKMS on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_CACHE = Path("/var/cache/ckms-tests/debs")

# The corpus, in the order it runs.  CONFIG_ONLY: the test compares how the
# dkms.conf is read for each kernel, not a build (openafs takes DKMS five
# minutes per kernel here; make_golden --build-all records it all the same).
PACKAGES = (
    "acpi-call-dkms",
    "tp-smapi-dkms",
    "v4l2loopback-dkms",
    "falcosecurity-scap-dkms",
    "xtables-addons-dkms",
    "dahdi-dkms",
    "openafs-modules-dkms",
    "lttng-modules-dkms",
)
CONFIG_ONLY = frozenset({"openafs-modules-dkms"})
SLOW = frozenset({"dahdi-dkms"})
# No bookworm package is excluded by its BUILD_EXCLUSIVE from bookworm's own
# kernels, so for a skip the corpus makes a kernel without an option the
# package requires: headers_without(kver, option).
SKIP_CASES = {"acpi-call-dkms": "CONFIG_ACPI"}

# usr/src/<name>-<version>: the version is what follows the first "-<digit>"
_SRCDIR_RE = re.compile(r"^(.+?)-(\d.*)$")


class FetchError(Exception):
    """A package could not be fetched or unpacked."""


@dataclass(frozen=True)
class Source:
    """An unpacked ``*-dkms`` package."""

    package: str  # the Debian package, e.g. acpi-call-dkms
    deb_version: str  # its Debian version, e.g. 1.2.2-2.1
    name: str  # the DKMS module name, from usr/src/<name>-<version>
    version: str  # the DKMS module version
    srcdir: Path  # <root>/usr/src/<name>-<version>

    @property
    def sourcetree(self) -> Path:
        """What DKMS calls the source tree (``--sourcetree``): <root>/usr/src."""
        return self.srcdir.parent

    @property
    def dkms_conf(self) -> Path:
        return self.srcdir / "dkms.conf"


def cache_dir() -> Path:
    return Path(os.environ.get("CKMS_TEST_CACHE") or DEFAULT_CACHE)


def _run(argv: list[str], cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if proc.returncode != 0:
        raise FetchError(f"{' '.join(argv)} exited {proc.returncode}"
                         f"{f' in {cwd}' if cwd else ''}: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def deb_fields(deb: Path) -> tuple[str, str]:
    """(Package, Version) of a .deb file."""
    fields = dict(line.split(": ", 1) for line in
                  _run(["dpkg-deb", "-f", str(deb), "Package", "Version"]).splitlines()
                  if ": " in line)
    return fields.get("Package", ""), fields.get("Version", "")


def candidate_version(package: str) -> str:
    """The version apt would fetch now."""
    for line in _run(["apt-cache", "show", "--no-all-versions", package]).splitlines():
        if line.startswith("Version: "):
            return line.split(": ", 1)[1].strip()
    raise FetchError(f"apt-cache knows no version of {package}: run apt-get update")


def _cached(cache: Path, package: str, version: str) -> Optional[Path]:
    for deb in sorted(cache.glob(f"{package}_*.deb")):
        if deb_fields(deb) == (package, version):
            return deb
    return None


def fetch(package: str, version: Optional[str] = None, cache: Optional[Path] = None) -> Path:
    """The .deb of package at version (default: apt's candidate), from the cache or downloaded."""
    cache = cache or cache_dir()
    version = version or candidate_version(package)
    if cache.is_dir():
        found = _cached(cache, package, version)
        if found:
            return found
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the package cache {cache} ({exc.strerror}): "
                         "set CKMS_TEST_CACHE to a writable directory") from None
    if not os.access(cache, os.W_OK):
        raise FetchError(f"{package} {version} is not in the package cache {cache}, which is "
                         "not writable: set CKMS_TEST_CACHE to a writable directory")
    _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=cache)
    found = _cached(cache, package, version)
    if not found:
        raise FetchError(f"apt-get download {package}={version} left no such .deb in {cache}")
    return found


def unpack(deb: Path, root: Path) -> Source:
    """Unpack deb under root (never install it) and find its DKMS source."""
    package, deb_version = deb_fields(deb)
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)])
    usr_src = root / "usr" / "src"
    found = [d for d in sorted(usr_src.iterdir()) if (d / "dkms.conf").is_file()] \
        if usr_src.is_dir() else []
    if len(found) != 1:
        raise FetchError(f"{deb}: expected one usr/src/<name>-<version>/dkms.conf, "
                         f"found {[str(d.relative_to(root)) for d in found]}")
    match = _SRCDIR_RE.match(found[0].name)
    if not match:
        raise FetchError(f"{deb}: cannot split {found[0].name} into <name>-<version>")
    return Source(package=package, deb_version=deb_version, name=match.group(1),
                  version=match.group(2), srcdir=found[0])


def source(package: str, root: Path, version: Optional[str] = None) -> Source:
    """Fetch (or take from the cache) and unpack package under root."""
    return unpack(fetch(package, version), root)


def headers_without(kver: str, option: str, dest: Path) -> Path:
    """A view of kver's real headers (symlinks) whose .config has option unset."""
    real = (Path("/lib/modules") / kver / "build").resolve()
    dest.mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != ".config":
            (dest / entry.name).symlink_to(entry)
    config = (real / ".config").read_text().splitlines()
    (dest / ".config").write_text("".join(
        f"# {option} is not set\n" if line.startswith(f"{option}=") else line + "\n"
        for line in config))
    return dest
