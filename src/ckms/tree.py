"""The state tree: layout, lock, and status derived from stat/readlink only.

Layout (the same as DKMS's, so existing tools keep working)::

    <root>/<name>/<version>/source -> /usr/src/<name>-<version>   added
    <root>/<name>/<version>/ckms.ini                              the definition
    <root>/<name>/<version>/<kver>/<arch>/module/*.ko             built
    <root>/<name>/<version>/<kver>/<arch>/log/*.log
    <root>/<name>/kernel-<kver>-<arch> -> <version>/<kver>/<arch> installed
    <root>/<name>/original_module/<kver>/<arch>/<path>            backed-up originals

ckms's private entries all start with a dot, which DKMS's globs skip:
``.lock`` (the tree's lock), ``<version>/.build-*`` (builds in progress),
``<version>/.failed-<kver>-<arch>/`` (the last failed build and its logs) and
``<name>/.txn-<kver>-<arch>.json`` (an install transaction's journal).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

from .errors import LockTimeout, StateError
from .model import version_key
from .privileges import chown_to_owner

STATES = ("added", "built", "installed", "failed", "disabled", "built+disabled")
NOT_KERNEL_DIRS = {"source", "build", "log", "module", "ckms.ini", "dkms.conf"}


@dataclass(frozen=True)
class StatusLine:
    name: str
    version: str
    kernel: str
    arch: str
    state: str
    log: Optional[str] = None  # the failed build's log directory

    def pretty(self) -> str:
        return f"{self.name}, {self.version}, {self.kernel}, {self.arch}: {self.state}"

    def plain(self) -> str:
        return f"{self.name} {self.version} {self.kernel} {self.arch} {self.state}"


class Tree:
    def __init__(self, root: Path, modules_root: Path = Path("/lib/modules")) -> None:
        self.root = root
        self.modules_root = modules_root  # where kernels' ckms-disable markers live

    # ----- paths -----------------------------------------------------------
    def pkgdir(self, name: str) -> Path:
        return self.root / name

    def verdir(self, name: str, version: str) -> Path:
        return self.root / name / version

    def builtdir(self, name: str, version: str, kver: str, arch: str) -> Path:
        return self.root / name / version / kver / arch

    def faileddir(self, name: str, version: str, kver: str, arch: str) -> Path:
        return self.root / name / version / f".failed-{kver}-{arch}"

    def installed_link(self, name: str, kver: str, arch: str) -> Path:
        return self.root / name / f"kernel-{kver}-{arch}"

    def originals(self, name: str, kver: str, arch: str) -> Path:
        return self.root / name / "original_module" / kver / arch

    def journal(self, name: str, kver: str, arch: str) -> Path:
        return self.root / name / f".txn-{kver}-{arch}.json"

    def definition(self, name: str, version: str) -> Path:
        """The package's definition: the ckms.ini copy, else (as DKMS) source/dkms.conf."""
        ini = self.verdir(name, version) / "ckms.ini"
        return ini if ini.is_file() else self.verdir(name, version) / "source" / "dkms.conf"

    # ----- queries ---------------------------------------------------------
    def require_root(self) -> None:
        if not self.root.is_dir():
            raise StateError(f"state directory {self.root} does not exist: create it "
                             "(owned by the user builds should run as) or pass -s DIR")

    def is_added(self, name: str, version: str) -> bool:
        return (self.verdir(name, version) / "source").is_symlink()

    def require_added(self, name: str, version: str) -> None:
        if not self.is_added(name, version):
            known = self.versions(name)
            hint = f" (added versions: {', '.join(known)})" if known else ""
            raise StateError(f"{name}={version} is not added{hint}; run 'ckms add SOURCE_DIR' first")

    def source(self, name: str, version: str) -> Path:
        src = self.verdir(name, version) / "source"
        if not src.is_dir():
            raise StateError(f"source of {name}={version} is gone: {src} -> "
                             f"{os.readlink(src) if src.is_symlink() else '?'}; "
                             "reinstall it or 'ckms remove' the package")
        return src

    def versions(self, name: str) -> List[str]:
        try:
            with os.scandir(self.pkgdir(name)) as it:
                return sorted(e.name for e in it
                              if not e.name.startswith(".") and not e.name.startswith("kernel-")
                              and e.name != "original_module" and e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    def is_built(self, name: str, version: str, kver: str, arch: str) -> bool:
        return self.builtdir(name, version, kver, arch).is_dir()

    def installed_version(self, name: str, kver: str, arch: str) -> Optional[str]:
        try:
            target = os.readlink(self.installed_link(name, kver, arch))
        except OSError:
            return None
        return target.split("/", 1)[0]

    def built_kernels(self, name: str, version: str) -> List[Tuple[str, str]]:
        out: List[Tuple[str, str]] = []
        for kdir in _subdirs(self.verdir(name, version)):
            if kdir.name in NOT_KERNEL_DIRS:
                continue
            out.extend((kdir.name, a.name) for a in _subdirs(Path(kdir.path)))
        return sorted(out)

    def is_disabled(self, name: str, version: str, kver: str) -> bool:
        return (self.modules_root / kver / "ckms-disable" / name / version).exists()

    # ----- status ----------------------------------------------------------
    def status(self, name: Optional[str] = None, version: Optional[str] = None,
               kernels: Optional[List[str]] = None, arch: Optional[str] = None,
               default_arch: str = "") -> List[StatusLine]:
        """Every package version x kernel, from one scan of the tree.

        With ``kernels`` only those kernels are shown; otherwise every kernel
        that has state in the tree or headers under the module root.
        """
        records: Dict[Tuple[str, str], Dict[Tuple[str, str], str]] = {}
        failed: Dict[Tuple[str, str, str, str], str] = {}
        seen_kernels: Set[Tuple[str, str]] = set()
        try:
            pkgs = [e for e in _subdirs(self.root) if not name or e.name == name]
        except OSError:
            pkgs = []
        for pkg in pkgs:
            installed: Dict[str, str] = {}  # "<ver>/<kver>/<arch>" -> kver
            versions = []
            with os.scandir(pkg.path) as it:
                for ent in it:
                    if ent.name.startswith("kernel-") and ent.is_symlink():
                        with contextlib.suppress(OSError):
                            installed[os.readlink(ent.path).strip("/")] = ent.name
                    elif (not ent.name.startswith(".") and ent.name != "original_module"
                          and ent.is_dir(follow_symlinks=False)
                          and (not version or ent.name == version)):
                        versions.append(ent)
            for ver in versions:
                states: Dict[Tuple[str, str], str] = {}
                added = False
                with os.scandir(ver.path) as it:
                    entries = list(it)
                for ent in entries:
                    if ent.name == "source":
                        added = True
                    elif ent.name.startswith(".failed-"):
                        kver, _, farch = ent.name[len(".failed-"):].rpartition("-")
                        failed[(pkg.name, ver.name, kver, farch)] = os.path.join(ent.path, "log")
                    elif (not ent.name.startswith(".") and ent.name not in NOT_KERNEL_DIRS
                          and ent.is_dir(follow_symlinks=False)):
                        for a in _subdirs(Path(ent.path)):
                            key = f"{ver.name}/{ent.name}/{a.name}"
                            states[(ent.name, a.name)] = "installed" if key in installed else "built"
                            seen_kernels.add((ent.name, a.name))
                for (kver, farch) in [(k[2], k[3]) for k in failed if k[:2] == (pkg.name, ver.name)]:
                    seen_kernels.add((kver, farch))
                if added or states:
                    records[(pkg.name, ver.name)] = states
        for inst in self.modules_root_kernels():
            seen_kernels.add((inst, default_arch))
        wanted = ([(k, arch or default_arch) for k in kernels] if kernels is not None
                  else sorted(seen_kernels, key=lambda ka: (version_key(ka[0]), ka[1])))
        lines: List[StatusLine] = []
        disabled_cache: Dict[str, Set[Tuple[str, str]]] = {}
        for (pname, pver) in sorted(records, key=lambda r: (r[0], version_key(r[1]))):
            states = records[(pname, pver)]
            for kver, karch in wanted:
                state = states.get((kver, karch), "added")
                log = failed.get((pname, pver, kver, karch))
                if state == "added" and log:
                    state = "failed"
                if kver not in disabled_cache:
                    disabled_cache[kver] = self._disabled_markers(kver)
                if (pname, pver) in disabled_cache[kver]:
                    state = {"added": "disabled", "failed": "disabled",
                             "built": "built+disabled"}.get(state, state)
                lines.append(StatusLine(pname, pver, kver, karch, state, log))
        return lines

    def modules_root_kernels(self) -> List[str]:
        """Kernels with headers installed under the module root."""
        try:
            return [e.name for e in _subdirs(self.modules_root)
                    if os.path.exists(os.path.join(e.path, "build", "Makefile"))]
        except OSError:
            return []

    def _disabled_markers(self, kver: str) -> Set[Tuple[str, str]]:
        base = self.modules_root / kver / "ckms-disable"
        out: Set[Tuple[str, str]] = set()
        try:
            for pkg in _subdirs(base):
                with os.scandir(pkg.path) as it:
                    out.update((pkg.name, v.name) for v in it)
        except OSError:
            pass
        return out

    # ----- the lock ----------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout: float, say: Callable[[str], None]) -> Iterator[None]:
        """Hold the tree's exclusive lock; wait up to timeout seconds for it."""
        path = self.root / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            chown_to_owner(path, self.root)
        try:
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                holder = _read_holder(path)
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"gave up after {timeout:g}s waiting for the lock on {self.root}, "
                        f"held by {holder}; retry when it has finished"
                    ) from None
                if not told:
                    say(f"waiting for the lock on {self.root} (held by {holder})...")
                    told = True
                time.sleep(0.2)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    # ----- add / remove / clean -------------------------------------------
    def add(self, name: str, version: str, srcdir: Path, definition: Path,
            copy_definition: bool = True) -> None:
        """Register srcdir; a ckms.ini is kept as a copy, a dkms.conf is read from the source."""
        verdir = self.verdir(name, version)
        if self.is_added(name, version):
            raise StateError(f"{name}={version} is already added "
                             f"(source: {os.readlink(verdir / 'source')})")
        pkgdir = self.pkgdir(name)
        pkgdir.mkdir(exist_ok=True)
        stage = Path(_mkdtemp(pkgdir, f".add-{version}-"))
        try:
            os.symlink(srcdir, stage / "source")
            if copy_definition:
                shutil.copyfile(definition, stage / "ckms.ini")
            os.chmod(stage, 0o755)
            if verdir.exists():
                # kernel dirs left from an earlier life of this version: keep
                # them, publish only the new source link and definition
                for entry in ("source", "ckms.ini"):
                    if os.path.lexists(stage / entry):
                        os.replace(stage / entry, verdir / entry)
                shutil.rmtree(stage)
            else:
                os.rename(stage, verdir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def remove(self, name: str, version: str) -> None:
        built = self.built_kernels(name, version)
        if built:
            kernels = ", ".join(f"{k} ({a})" for k, a in built)
            raise StateError(f"{name}={version} is still built for: {kernels}; "
                             "'ckms uninstall' and 'ckms clean' it for each kernel first")
        verdir = self.verdir(name, version)
        trash = Path(_mkdtemp(self.pkgdir(name), ".trash-"))
        os.rename(verdir, trash / "v")
        shutil.rmtree(trash, ignore_errors=True)
        self.prune_package_dir(name)

    def prune_package_dir(self, name: str) -> None:
        pkgdir = self.pkgdir(name)
        for sub in (pkgdir / "original_module",):
            _remove_empty_dirs(sub)
        with contextlib.suppress(OSError):
            pkgdir.rmdir()

    def clean(self, name: str, version: str, kver: str, arch: str) -> bool:
        """Drop the build (and a failed build) for one kernel. True if there was one."""
        if self.installed_version(name, kver, arch) == version:
            raise StateError(f"{name}={version} is installed for {kver}; "
                             f"'ckms -k {kver} uninstall {name}' first")
        found = False
        built = self.builtdir(name, version, kver, arch)
        for path in (built, self.faileddir(name, version, kver, arch)):
            if path.exists():
                found = True
                trash = Path(_mkdtemp(self.verdir(name, version), ".trash-"))
                os.rename(path, trash / "x")
                shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            built.parent.rmdir()
        return found


def _subdirs(path: Path) -> List[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return [e for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]


def _mkdtemp(parent: Path, prefix: str) -> str:
    import tempfile
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another ckms process"
