"""``ckms.ini`` -> Package.

The format is CKMS's (see ckms.ini(5)); files written for CKMS load unchanged.
Differences, all deliberate: no ``%(...)`` interpolation (hooks are shell code
and use ``${CKMS_...}`` variables), no copying of ``[general]`` keys into other
sections, unknown keys and sections are warned about with file and line,
booleans accept ``sh: EXPR``, and the ``build`` hook is optional (kbuild is
used without one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List

from ..errors import ConfigError
from ..model import HOOKS, BoolSpec, Module, Package, ShellBool
from .ini import IniFile, read_ini

GENERAL_KEYS = ("name", "version", "strip", "make", "initramfs", "autoinstall", "build_depends")
MODULE_KEYS = ("path", "dest", "strip")
_INTERP_RE = re.compile(r"%\([A-Za-z0-9_]+\)s")

Warn = Callable[[str], None]


def parse_bool(value: str, where: str, allow_shell: bool = True) -> BoolSpec:
    low = value.strip().lower()
    if low in ("yes", "true", "1", "on"):
        return True
    if low in ("no", "false", "0", "off"):
        return False
    if allow_shell and low.startswith("sh:"):
        expr = value.strip()[3:].strip()
        if expr:
            return ShellBool(expr)
    forms = "yes/no, true/false, 1/0" + (" or 'sh: COMMAND'" if allow_shell else "")
    raise ConfigError(f"{where}: invalid boolean {value!r}; use {forms}")


def load_ckms_ini(path: Path, warn: Warn) -> Package:
    return package_from_ini(read_ini(path), warn)


def package_from_ini(ini: IniFile, warn: Warn) -> Package:
    path = ini.path
    if "general" not in ini.sections:
        raise ConfigError(f"{path}: missing [general] section")
    gen = ini.sections["general"].entries

    for sname, sect in ini.sections.items():
        if sname == "general":
            known: tuple[str, ...] = GENERAL_KEYS
        elif sname == "hooks":
            known = HOOKS
        elif sname.startswith("module."):
            known = MODULE_KEYS
        else:
            warn(f"{path}:{sect.line}: unknown section [{sname}] ignored")
            continue
        for key, entry in sect.entries.items():
            if key not in known:
                warn(f"{path}:{entry.line}: unknown key {key!r} in [{sname}] ignored")
            elif _INTERP_RE.search(entry.value):
                warn(f"{path}:{entry.line}: '%(...)s' is not interpolated by ckms; "
                     "use the ${CKMS_...} variables in hooks")

    for key in ("name", "version"):
        if not gen.get(key) or not gen[key].value:
            raise ConfigError(f"{path}: [general] has no {key}")

    def boolean(key: str, default: bool, allow_shell: bool = True) -> BoolSpec:
        if key not in gen:
            return default
        return parse_bool(gen[key].value, ini.where("general", key), allow_shell)

    modules: List[Module] = []
    for sname, sect in ini.sections.items():
        if not sname.startswith("module."):
            continue
        modname = sname[len("module."):]
        for key in ("path", "dest"):
            if key not in sect.entries:
                raise ConfigError(f"{path}:{sect.line}: [{sname}] has no {key!r}")
        strip = None
        if "strip" in sect.entries:
            strip = parse_bool(sect.entries["strip"].value, ini.where(sname, "strip"))
        try:
            modules.append(Module(
                name=modname,
                location=sect.entries["path"].value,
                dest=sect.entries["dest"].value,
                strip=strip,
            ))
        except ConfigError as exc:
            raise ConfigError(f"{path}:{sect.line}: [{sname}]: {exc}") from None
    modules.sort(key=lambda m: m.name)

    hooks = {}
    if "hooks" in ini.sections:
        hooks = {k: e.value for k, e in ini.sections["hooks"].entries.items()
                 if k in HOOKS and e.value.strip()}

    autoinstall = boolean("autoinstall", False, allow_shell=False)
    assert isinstance(autoinstall, bool)
    try:
        return Package(
            name=gen["name"].value,
            version=gen["version"].value,
            modules=tuple(modules),
            definition=path,
            make=gen["make"].value if "make" in gen else "gmake",
            strip=boolean("strip", True),
            initramfs=boolean("initramfs", False),
            autoinstall=autoinstall,
            hooks=hooks,
            build_depends=tuple(gen["build_depends"].value.split()) if "build_depends" in gen else (),
        )
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
