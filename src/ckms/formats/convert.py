"""A package -> an equivalent ``ckms.ini`` (``ckms convert DIR``).

A dkms.conf is a program run for each kernel; a ckms.ini is static.  The
conversion writes what the dkms.conf gives for one kernel and lists what a
ckms.ini cannot say: BUILD_EXCLUSIVE_*, OBSOLETE_BY, BUILD_DEPENDS_REBUILD,
DEST_MODULE_NAME renames, the MAKE_MATCH/PATCH_MATCH choices made for that
kernel, and every value that comes out differently when the file is read for
other kernels.  Patches become ``patch -p1`` commands at the start of the
pre_build hook, which is what DKMS does before PRE_BUILD.  The text is read
back with the ckms.ini reader before it is returned; whatever does not come
back equal is listed too.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError
from ..kernel import Kernel
from ..model import BoolSpec, Exclusive, Package, ShellBool
from . import LoadOptions
from .ckms_ini import package_from_ini
from .dkms_conf import EXCLUSIVE, DkmsConf, read_dkms_conf
from .ini import parse_ini
from .shell import Values, Warn

PROBE_VERSION = "1.0.0-ckms-probe"  # a kernel no dkms.conf expects, to see what depends on it


def to_ckms_ini(conf: Union[Package, DkmsConf],
                variants: Sequence[DkmsConf] = ()) -> Tuple[str, List[str]]:
    """The ckms.ini text for a package, and what could not be converted.

    ``conf``: the package, or better the dkms.conf as read for the target
    kernel (``read_dkms_conf``), which also knows the raw directives (to
    report MAKE_MATCH and PATCH_MATCH) and the kernel.  ``variants``: the
    same file read for other kernels; every ckms.ini value that differs for
    one of them is reported as depending on the kernel.  Returns (text,
    problems): the text always loads with ``load_ckms_ini``; each problem is
    one sentence saying what is lost.
    """
    pkg = conf.package if isinstance(conf, DkmsConf) else conf
    kver = conf.kernel.version if isinstance(conf, DkmsConf) else ""
    directives: Values = conf.directives if isinstance(conf, DkmsConf) else {}
    sections = _sections(pkg)
    problems = _lost(pkg, directives, kver)
    for other in variants:
        problems += _differences(sections, _sections(other.package), kver, other.kernel.version)
        if other.package.exclusive != pkg.exclusive:
            problems.append(f"BUILD_EXCLUSIVE depends on the kernel: {_rules(pkg.exclusive)} for "
                            f"kernel {kver}, {_rules(other.package.exclusive)} for kernel "
                            f"{other.kernel.version}")
    source = f" from {pkg.definition}" if pkg.fmt == "dkms.conf" else ""
    header = f"# converted by ckms convert{source}" + (f" for kernel {kver}" if kver else "")
    text = header.replace("\n", " ") + "\n" + _render(sections)
    problems += _round_trip(text, pkg, sections)
    return text, problems


def convert(path: Path, warn: Warn, opts: LoadOptions,
            probes: Optional[Sequence[Kernel]] = None) -> Tuple[str, List[str]]:
    """Read a dkms.conf for opts.kernel and for ``probes``; convert it.

    ``probes`` default to one made-up kernel (version PROBE_VERSION, headers
    that do not exist): whatever reads differently for it depends on the
    kernel.  Pass the installed kernels to check those instead.
    """
    conf = read_dkms_conf(path, warn, opts)
    if probes is None:
        probes = [Kernel(version=PROBE_VERSION, machine=conf.kernel.machine,
                         hdrdir=Path("/nonexistent/ckms-probe/build"),
                         moddir=Path("/nonexistent/ckms-probe"))]
    variants, problems = [], []
    for kernel in probes:
        try:
            variants.append(read_dkms_conf(path, lambda msg: None,
                                           dataclasses.replace(opts, kernel=kernel)))
        except ConfigError as exc:
            problems.append(f"it depends on the kernel: read for kernel {kernel.version} it fails: {exc}")
    text, lost = to_ckms_ini(conf, variants)
    return text, lost + problems


Sections = Dict[str, Dict[str, str]]


def _bool(spec: BoolSpec) -> str:
    return f"sh: {spec.expr}" if isinstance(spec, ShellBool) else ("yes" if spec else "no")


def _sections(pkg: Package) -> Sections:
    general = {"name": pkg.name, "version": pkg.version, "make": pkg.make,
               "strip": _bool(pkg.strip)}
    if pkg.initramfs is not False:
        general["initramfs"] = _bool(pkg.initramfs)
    if pkg.autoinstall:
        general["autoinstall"] = "yes"
    if pkg.build_depends:
        general["build_depends"] = " ".join(pkg.build_depends)
    hooks = dict(pkg.hooks)
    if pkg.patches:  # applied before pre_build, as ckms and DKMS do
        steps = [f"patch -p1 -N -i {shlex.quote('./' + p)} || exit" for p in pkg.patches]
        hooks["pre_build"] = "; ".join(steps + [hooks["pre_build"]] if "pre_build" in hooks else steps)
    sections: Sections = {"general": general}
    if hooks:
        sections["hooks"] = hooks
    for mod in pkg.modules:
        entries = {"path": mod.location, "dest": mod.dest}
        if mod.strip is not None:
            entries["strip"] = _bool(mod.strip)
        sections[f"module.{mod.name}"] = entries
    return sections


def _render(sections: Sections) -> str:
    out = []
    for name, entries in sections.items():
        out.append(f"\n[{name}]")
        for key, value in entries.items():
            first, *rest = value.split("\n")
            out.append(f"{key} = {first}".rstrip())
            out += [f"    {line}" if line.strip() else "" for line in rest]
    return "\n".join(out).lstrip("\n") + "\n"


def _lost(pkg: Package, directives: Values, kver: str) -> List[str]:
    for_kernel = f"kernel {kver}" if kver else "the kernel it was read for"
    lost = []
    if pkg.exclusive != Exclusive():
        lost.append(f"BUILD_EXCLUSIVE ({_rules(pkg.exclusive)}): ckms.ini cannot restrict the "
                    "kernels a package is built for")
    if any(i > 0 for name in EXCLUSIVE for i in directives.get(name, {})):
        lost.append(f"per-module BUILD_EXCLUSIVE_*[#]: the modules are those for {for_kernel}")
    if any(directives.get("MAKE_MATCH", {}).values()):
        lost.append(f"MAKE_MATCH: the build command is the one chosen for {for_kernel}")
    if any(directives.get("PATCH_MATCH", {}).values()):
        lost.append(f"PATCH_MATCH: the patches are those chosen for {for_kernel}")
    if pkg.obsolete_by:
        lost.append(f"OBSOLETE_BY={pkg.obsolete_by!r}: ckms.ini has no equivalent")
    if pkg.build_depends_rebuild:
        lost.append("BUILD_DEPENDS_REBUILD: ckms.ini has no equivalent")
    for mod in pkg.modules:
        if mod.dest_name != mod.name:
            lost.append(f"DEST_MODULE_NAME: {mod.name}.ko is installed as {mod.dest_name}.ko "
                        f"by DKMS; ckms.ini installs it as {mod.name}.ko")
    return lost


def _rules(exclusive: Exclusive) -> str:
    return ", ".join(f"{f.name}={getattr(exclusive, f.name)!r}" for f in dataclasses.fields(Exclusive)
                     if getattr(exclusive, f.name)) or "none"


def _differences(mine: Sections, other: Sections, kver: str, other_kver: str) -> List[str]:
    here = f"kernel {kver}" if kver else "the target kernel"
    found = []
    only_mine = [n[len("module."):] for n in mine if n not in other]
    only_other = [n[len("module."):] for n in other if n not in mine]
    if only_mine:
        found.append(f"the modules depend on the kernel: only for {here}: {', '.join(only_mine)}")
    if only_other:
        found.append(f"the modules depend on the kernel: only for kernel {other_kver}: "
                     f"{', '.join(only_other)}")
    for name in (n for n in mine if n in other):
        for key in dict.fromkeys([*mine[name], *other[name]]):
            a, b = mine[name].get(key, ""), other[name].get(key, "")
            if a != b:
                a, b = _excerpts(a, b)
                found.append(f"[{name}] {key} depends on the kernel: {a!r} for {here}, "
                             f"{b!r} for kernel {other_kver}")
    return found


def _excerpts(a: str, b: str, width: int = 60) -> Tuple[str, str]:
    """The parts of a and b that differ, with a little context, for a message."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    start = max(0, start - 10)
    end = max(0, end - 10)

    def cut(s: str) -> str:
        mid = s[start:len(s) - end]
        tail = "..." if end or len(mid) > width else ""
        return ("..." if start else "") + mid[:width] + tail
    return cut(a), cut(b)


def _round_trip(text: str, pkg: Package, sections: Sections) -> List[str]:
    warnings: List[str] = []
    try:
        back = package_from_ini(parse_ini(text, Path("ckms.ini")), warnings.append)
    except ConfigError as exc:  # the values come from a valid package: not expected
        return [f"the converted text does not load: {exc}"]
    problems = [f"ckms.ini reader: {w}" for w in warnings]
    got = _sections(back)
    for name, entries in sections.items():
        for key, value in entries.items():
            if got.get(name, {}).get(key) != value:
                problems.append(f"[{name}] {key} cannot be written exactly in ckms.ini (it "
                                "strips values, and the indentation and the comment lines "
                                "of a multi-line value)")
    if (back.name, back.version) != (pkg.name, pkg.version):
        problems.append("name or version did not survive the conversion")
    return problems
