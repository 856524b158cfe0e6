"""DKMS's status lines, from the tree with scandir/stat/readlink only.

DKMS 3.0.10 prints, for every added module/version (in the C locale's order
of ``module/version``)::

    name/version: added                                   nothing built (for -k)
    name/version, kver, arch: built|installed[suffixes]   one line per kernel/arch

where a kernel/arch is ``<version>/<kver>/<arch>/module/`` with ``kver``
starting with digits and a dot, and *installed* means the
``kernel-<kver>-<arch>`` link points at it.  The suffixes are
`` (original_module exists)`` when ``original_module/<kver>/<arch>/`` exists,
then per module `` (WARNING! Missing some built modules!)`` or, when
installed, `` (WARNING! Diff between built and installed module!)``.

DKMS evaluates each dkms.conf for every line to know the modules; this
does not.  After an install ckms-dkms writes a manifest into the built dir
(``.ckms-installed.json``: each module's built and installed file with their
size and mtime), so a status check is a few stat calls; when the stats
differ from the manifest, or for trees installed by DKMS itself (no
manifest), the built and installed files are compared byte by byte
(decompressed when only one is compressed), the installed one being found
in ``updates/dkms``, ``extra`` or ``updates`` or through ``modules.dep``.
"""

from __future__ import annotations

import contextlib
import filecmp
import gzip
import json
import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import CkmsError
from ..kernel import COMPRESSIONS

MANIFEST = ".ckms-installed.json"
SUFFIXES = ("", *COMPRESSIONS.values())
DKMS_DIRS = ("updates/dkms", "extra", "updates")  # where DKMS installs, by distribution
KVER_DIR = re.compile(r"[0-9]+\..*")  # DKMS's glob +([0-9]).*
ORIGINAL = " (original_module exists)"
MISSING = " (WARNING! Missing some built modules!)"
DIFF = " (WARNING! Diff between built and installed module!)"

Stat = Tuple[int, int]


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    kernel: str = ""
    arch: str = ""
    state: str = "added"  # added, built, installed
    extra: str = ""  # the suffixes

    def line(self) -> str:
        if self.state == "added":
            return f"{self.name}/{self.version}: added"
        return f"{self.name}/{self.version}, {self.kernel}, {self.arch}: {self.state}{self.extra}"


def scan(root: Path, install_root: Path, module: str = "", version: str = "", kernel: str = "",
         arch: str = "", extras: bool = True) -> List[Entry]:
    """The status entries DKMS's ``do_status MODULE VERSION KERNEL ARCH`` prints ('' = any)."""
    out: List[Entry] = []
    for name, ver in _module_versions(root, module, version):
        vdir = os.path.join(root, name, ver)
        src = os.path.join(vdir, "source")
        if not (os.path.islink(src) or os.path.isdir(src)):
            continue
        found = False
        for kver, karch in _kernel_arches(vdir, kernel, arch):
            kadir = os.path.join(vdir, kver, karch)
            if not os.path.isdir(os.path.join(kadir, "module")):
                continue
            found = True
            installed = _link_points_to(os.path.join(root, name), f"kernel-{kver}-{karch}",
                                        os.path.join(ver, kver, karch))
            extra = (_extras(root, install_root, name, kver, karch, kadir, installed)
                     if extras else "")
            out.append(Entry(name, ver, kver, karch, "installed" if installed else "built", extra))
        if not found:
            out.append(Entry(name, ver))
    return out


def _names(path: str) -> List[str]:
    """What a shell glob ``*`` gives in path (no dot files); nothing if path is not a dir."""
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if not e.name.startswith(".")]
    except OSError:
        return []


def _module_versions(root: Path, module: str, version: str) -> List[Tuple[str, str]]:
    pairs = [(m, v) for m in ([module] if module else _names(str(root)))
             for v in ([version] if version else _names(os.path.join(root, m)))]
    return sorted(pairs, key=lambda mv: f"{mv[0]}/{mv[1]}")


def _kernel_arches(vdir: str, kernel: str, arch: str) -> List[Tuple[str, str]]:
    kernels = [kernel] if kernel else [k for k in _names(vdir) if KVER_DIR.fullmatch(k)]
    pairs = [(k, a) for k in kernels for a in ([arch] if arch else _names(os.path.join(vdir, k)))]
    return sorted(pairs, key=lambda ka: f"{ka[0]}/{ka[1]}")


def _link_points_to(pkgdir: str, link: str, target: str) -> bool:
    try:
        dest = os.readlink(os.path.join(pkgdir, link))
    except OSError:
        return False
    return os.path.normpath(os.path.join(pkgdir, dest)) == os.path.normpath(os.path.join(pkgdir, target))


def _extras(root: Path, install_root: Path, name: str, kver: str, arch: str, kadir: str,
            installed: bool) -> str:
    extra = ORIGINAL if os.path.isdir(os.path.join(root, name, "original_module", kver, arch)) else ""
    built = built_modules(os.path.join(kadir, "module"))
    manifest = read_manifest(kadir)
    modules = list(manifest) if manifest else sorted(built)
    for mod in modules:
        if mod not in built:
            extra += MISSING
        elif installed and not _same_as_installed(built[mod], install_root / kver, mod,
                                                  manifest.get(mod) if manifest else None):
            extra += DIFF
    return extra


def built_modules(moddir: str) -> Dict[str, str]:
    """module name -> path of its file in a built dir's module/ (.ko first, as DKMS)."""
    found: Dict[str, str] = {}
    for fname in sorted(_names(moddir), key=lambda f: (not f.endswith(".ko"), f)):
        for sfx in SUFFIXES:
            if fname.endswith(".ko" + sfx):
                found.setdefault(fname[:-len(".ko" + sfx)], os.path.join(moddir, fname))
                break
    return found


# ----- the manifest ----------------------------------------------------------------------
def _stat(path: str) -> Optional[Stat]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def read_manifest(kadir: str) -> Dict[str, Dict[str, object]]:
    """module name -> {built, installed, built_stat, installed_stat}; {} if none or unreadable."""
    try:
        with open(os.path.join(kadir, MANIFEST), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    mods = data.get("modules") if isinstance(data, dict) else None
    if not isinstance(mods, list):
        return {}
    return {m["name"]: m for m in mods if isinstance(m, dict) and isinstance(m.get("name"), str)}


def write_manifest(kadir: Path, kernel_dir: Path, modules: List[Tuple[str, str]]) -> Path:
    """Record (module name, installed path relative to kernel_dir) after an install."""
    records = []
    for name, installed in modules:
        built = built_modules(str(kadir / "module")).get(name, "")
        records.append({"name": name, "built": os.path.basename(built), "installed": installed,
                        "built_stat": _stat(built), "installed_stat": _stat(str(kernel_dir / installed))})
    path = kadir / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"modules": records}, indent=1) + "\n")
    os.rename(tmp, path)
    return path


# ----- comparing a built module with the installed one ----------------------------------------
def _same_as_installed(built: str, kernel_dir: Path, name: str,
                       record: Optional[Dict[str, object]]) -> bool:
    if record is not None and isinstance(record.get("installed"), str):
        installed = str(kernel_dir / str(record["installed"]))
        recorded = (_as_stat(record.get("built_stat")), _as_stat(record.get("installed_stat")))
        now = (_stat(built), _stat(installed))
        if None not in now and recorded == now:
            return True  # both files are as they were right after the install
        return same_module(built, installed)
    candidate = _find_installed(kernel_dir, name)
    return candidate is not None and same_module(built, candidate)


def _as_stat(value: object) -> Optional[Stat]:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


def _find_installed(kernel_dir: Path, name: str) -> Optional[str]:
    for sub in DKMS_DIRS:
        for sfx in SUFFIXES:
            path = os.path.join(kernel_dir, sub, f"{name}.ko{sfx}")
            if os.path.isfile(path):
                return path
    for rel in _modules_dep(kernel_dir):
        base = os.path.basename(rel)
        if any(base == f"{name}.ko{sfx}" for sfx in SUFFIXES):
            return os.path.join(kernel_dir, rel)
    return None


def _modules_dep(kernel_dir: Path) -> Iterator[str]:
    with contextlib.suppress(OSError), open(kernel_dir / "modules.dep", encoding="utf-8",
                                            errors="replace") as fh:
        for line in fh:
            yield line.split(":", 1)[0]


def same_module(first: str, second: str) -> bool:
    """Same content, looking through gzip/xz/zstd when only one of them is compressed."""
    try:
        if _suffix(first) == _suffix(second):
            return filecmp.cmp(first, second, shallow=False)
        return _content(first) == _content(second)
    except (OSError, lzma.LZMAError, CkmsError):
        return False


def _suffix(path: str) -> str:
    return next((s for s in SUFFIXES[1:] if path.endswith(s)), "")


def _content(path: str) -> bytes:
    sfx = _suffix(path)
    if sfx == ".xz":
        with lzma.open(path) as fh:
            return fh.read()
    if sfx == ".gz":
        with gzip.open(path) as fh:
            return fh.read()
    if sfx == ".zst":
        from ..run import run_quiet_bytes
        return run_quiet_bytes(["zstd", "-dcq", path])
    with open(path, "rb") as fh:
        return fh.read()
