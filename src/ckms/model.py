"""The package model: what both definition formats parse into.

Operations (build, install, status...) only ever see these objects, never the
file they came from.  Everything here is immutable and validated on
construction, so a model that exists is one that is safe to act on: names,
versions and paths cannot escape the state tree or the module directory.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

from .errors import ConfigError, UsageError

# Package names: what DKMS and CKMS accept in practice (zfs, nvidia-current,
# v4l2loopback, acpi_call, r8168...).  No '/', no '=', no leading dot.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Versions: upstream versions, git describe output, Debian-ish suffixes.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~:-]*$")
# Kernel module names: what kbuild produces (foo.ko, foo-bar.ko).
_MODULE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
# Kernel versions as found under /lib/modules.
_KVER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")

HOOKS = (
    "post_add",
    "configure",
    "pre_build",
    "build",
    "post_build",
    "pre_install",
    "post_install",
    "pre_remove",
    "post_remove",
)


def check_name(name: str, what: str = "package name") -> str:
    if not _NAME_RE.match(name) or len(name) > 128:
        raise ConfigError(
            f"invalid {what} {name!r}: use letters, digits and . _ + - "
            "(not starting with a dot)"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version) or len(version) > 128:
        raise ConfigError(
            f"invalid version {version!r}: use letters, digits and . _ + ~ : -"
        )
    return version


def check_kernel_version(kver: str) -> str:
    if not _KVER_RE.match(kver) or len(kver) > 128:
        raise UsageError(f"invalid kernel version {kver!r}")
    return kver


def check_module_name(name: str) -> str:
    if not _MODULE_RE.match(name):
        raise ConfigError(
            f"invalid kernel module name {name!r}: use letters, digits, _ and -"
        )
    return name


def check_relpath(path: str, what: str) -> str:
    """Normalise a relative path that must stay inside its base directory.

    Leading slashes are tolerated (DKMS writes ``/updates/dkms``) and dropped;
    ``..`` components that would climb out of the base are refused.
    """
    if "\0" in path or "\n" in path:
        raise ConfigError(f"invalid {what} {path!r}")
    norm = posixpath.normpath(path.strip().lstrip("/") or ".")
    if norm == ".." or norm.startswith("../"):
        raise ConfigError(f"{what} {path!r} escapes its directory")
    return norm


def version_key(version: str) -> Tuple[object, ...]:
    """Sort key putting 1.10 after 1.9."""
    parts: List[object] = []
    num = ""
    for ch in version + "\0":
        if ch.isdigit():
            num += ch
            continue
        if num:
            parts.append((0, int(num)))
            num = ""
        if ch != "\0":
            parts.append((1, ch))
    return tuple(parts)


def parse_package_ref(ref: str) -> Tuple[str, Optional[str]]:
    """Split ``NAME=VERSION`` (or ``NAME`` alone) and validate both parts."""
    name, sep, version = ref.partition("=")
    try:
        check_name(name)
        if sep:
            check_version(version)
    except ConfigError as exc:
        raise UsageError(f"bad package {ref!r}: {exc}; expected NAME=VERSION") from None
    return name, (version if sep else None)


@dataclass(frozen=True)
class ShellBool:
    """A boolean decided at build time by a shell expression (``sh: ...``)."""

    expr: str


BoolSpec = Union[bool, ShellBool]


@dataclass(frozen=True)
class Module:
    """One kernel module a package produces."""

    name: str  # file name of the built module, without .ko
    location: str  # directory in the build tree holding NAME.ko
    dest: str  # directory under /lib/modules/<kver> to install into
    dest_name: str = ""  # installed file name without .ko (DKMS DEST_MODULE_NAME)
    strip: Optional[BoolSpec] = None  # None: follow the package

    def __post_init__(self) -> None:
        check_module_name(self.name)
        object.__setattr__(self, "location", check_relpath(self.location, "module path"))
        object.__setattr__(self, "dest", check_relpath(self.dest, "module dest"))
        if not self.dest_name:
            object.__setattr__(self, "dest_name", self.name)
        check_module_name(self.dest_name)

    @property
    def dest_relpath(self) -> str:
        """Path of the uncompressed module under the kernel's module dir."""
        return posixpath.normpath(posixpath.join(self.dest, self.dest_name + ".ko"))


@dataclass(frozen=True)
class Exclusive:
    """The kernels a package is for (DKMS's ``BUILD_EXCLUSIVE_*``); empty: all."""

    kernel: str = ""  # regular expression searched in the kernel version
    kernel_min: str = ""  # lowest kernel version (inclusive)
    kernel_max: str = ""  # highest kernel version (inclusive)
    arch: str = ""  # regular expression searched in the machine name
    config: Tuple[str, ...] = ()  # CONFIG_FOO: must be y or m; !CONFIG_FOO: must not

    def __post_init__(self) -> None:
        for what, rx in (("BUILD_EXCLUSIVE_KERNEL", self.kernel), ("BUILD_EXCLUSIVE_ARCH", self.arch)):
            try:
                re.compile(rx)
            except re.error as exc:
                raise ConfigError(f"{what}: invalid regular expression {rx!r}: {exc}") from None

    def why_not(self, kver: str, machine: str, config: Mapping[str, str]) -> Optional[str]:
        """Why the kernel is excluded, or None when the package is for it."""
        if self.kernel and not re.search(self.kernel, kver):
            return f"kernel {kver} does not match {self.kernel!r}"
        if self.kernel_min and version_key(kver) < version_key(self.kernel_min):
            return f"kernel {kver} is older than {self.kernel_min}"
        if self.kernel_max and version_key(kver) > version_key(self.kernel_max):
            return f"kernel {kver} is newer than {self.kernel_max}"
        if self.arch and not re.search(self.arch, machine):
            return f"architecture {machine} does not match {self.arch!r}"
        for opt in self.config:
            negate = opt.startswith("!")
            name = opt.lstrip("!")
            enabled = config.get(name) in ("y", "m")
            if enabled == negate:
                return f"kernel {kver} has {name} {'set' if enabled else 'unset'}"
        return None


@dataclass(frozen=True)
class Package:
    """A versioned collection of kernel modules and the recipe to build them."""

    name: str
    version: str
    modules: Tuple[Module, ...]
    definition: Path  # the file the package was read from
    make: str = "gmake"
    strip: BoolSpec = True
    initramfs: BoolSpec = False
    autoinstall: bool = False
    hooks: Mapping[str, str] = field(default_factory=dict)
    build_depends: Tuple[str, ...] = ()
    build_depends_rebuild: bool = False  # rebuild when a BUILD_DEPENDS package changes
    exclusive: Exclusive = Exclusive()
    patches: Tuple[str, ...] = ()  # patch files relative to the source, applied with -p1
    obsolete_by: str = ""  # a kernel version from which on the kernel has this itself
    no_weak_modules: bool = False  # accepted for DKMS; ckms never makes weak modules
    fmt: str = "ckms.ini"  # the definition format: "ckms.ini" or "dkms.conf"

    def __post_init__(self) -> None:
        check_name(self.name)
        check_version(self.version)
        if not self.modules:
            raise ConfigError(f"{self.definition}: package {self.name} declares no kernel modules")
        seen: dict[str, str] = {}
        for mod in self.modules:
            for key in (f"name:{mod.name}", f"dest:{mod.dest_relpath}"):
                if key in seen:
                    raise ConfigError(
                        f"{self.definition}: module {mod.name} clashes with {seen[key]}"
                    )
                seen[key] = mod.name
        for hook in self.hooks:
            if hook not in HOOKS:
                raise ConfigError(f"{self.definition}: unknown hook {hook!r}")

    @property
    def ref(self) -> str:
        return f"{self.name}={self.version}"
