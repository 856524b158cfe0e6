"""DKMS 3.x's command line: ``ACTION [module/version] [options]``, in any order.

Options taking a value accept ``--opt=value`` and ``--opt value`` (short ones:
``-k value``); ``-k`` may be repeated and takes ``KVER`` or ``KVER/ARCH``;
``-m`` takes ``MODULE`` or ``MODULE/VERSION``; a word that is not an action
is a source tree (a directory holding dkms.conf, or the dkms.conf itself)
or, the first time, ``module/version``.  The checks after parsing and their
exit codes are DKMS's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import DkmsError

ACTIONS = ("add", "build", "install", "uninstall", "unbuild", "remove", "status", "autoinstall",
           "match", "kernel_preinst", "kernel_postinst", "kernel_prerm", "generate_mok")
UNSUPPORTED_ACTIONS = ("mktarball", "ldtarball")

# option -> attribute of Invocation; these take a value
VALUE_OPTIONS = {
    "-m": "module", "--module": "module", "-v": "version",
    "-k": "kernel", "--kernelver": "kernel", "-a": "arch", "--arch": "arch",
    "--templatekernel": "template", "-c": "conf", "-j": "jobs",
    "--dkmstree": "dkms_tree", "--sourcetree": "source_tree", "--installtree": "install_tree",
    "--kernelsourcedir": "kernel_source_dir", "--directive": "directive",
    "--etcdir": "etc_dir",  # ckms's own: where framework.conf and the override files are
}
FLAGS = {
    "--force": "force", "--force-version-override": "force_version_override", "--all": "all",
    "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet", "--no-depmod": "no_depmod",
    "-V": "show_version", "--version": "show_version", "-h": "help", "--help": "help",
}
DEPRECATED = ("--no-initrd", "--no-clean-kernel", "--no-prepare-kernel")  # accepted, as DKMS does
UNSUPPORTED = ("--archive", "--binaries-only", "--source-only", "--config", "--rpm_safe_upgrade",
               "--symlink-modules", "--modprobe-on-install", "--debug")
_MV = re.compile(r"^([^/]*)/(.*)$")
_DIRECTIVE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[0-9]+\])?$")  # NAME or NAME[i]

USAGE = """\
Usage: ckms-dkms [action] [options]
  [action]  = { add | remove | build | unbuild | install | uninstall | match |
               autoinstall | status | generate_mok |
               kernel_preinst | kernel_postinst | kernel_prerm }
  [options] = [-m module] [-v module-version] [-k kernel-version] [-a arch]
              [-c dkms.conf-location] [-q] [--force] [--force-version-override] [--all]
              [--templatekernel=kernel] [--directive='cli-directive=cli-value']
              [--kernelsourcedir=source-location]
              [--dkmstree path] [--sourcetree path] [--installtree path] [--etcdir path]
              [--verbose] [--no-depmod] [-j number] [--version] [--help]"""


@dataclass
class Invocation:
    """What the command line asks for."""

    action: str = ""
    module: str = ""
    version: str = ""
    kernels: List[str] = field(default_factory=list)
    arches: List[str] = field(default_factory=list)
    template: str = ""
    conf: Optional[Path] = None
    source_dir: Optional[Path] = None  # add PATH
    dkms_tree: Optional[Path] = None  # None: framework.conf, else DKMS's default
    source_tree: Optional[Path] = None
    install_tree: Optional[Path] = None
    etc_dir: Path = Path("/etc/dkms")
    kernel_source_dir: Optional[Path] = None
    directives: List[Tuple[str, str]] = field(default_factory=list)
    jobs: Optional[int] = None
    force: bool = False
    force_version_override: bool = False
    all: bool = False
    verbose: bool = False
    quiet: bool = False
    no_depmod: bool = False
    show_version: bool = False
    help: bool = False

    def module_version(self, action: str) -> Tuple[str, str]:
        """DKMS's check_module_args: both are needed (exit 1)."""
        if not (self.module and self.version):
            raise DkmsError(1, "Arguments <module> and <module-version> are not specified.",
                            f"Usage: {action} <module>/<module-version> or",
                            f"       {action} -m <module>/<module-version> or",
                            f"       {action} -m <module> -v <module-version>")
        return self.module, self.version


def parse(argv: List[str], warn: Callable[[str], None]) -> Invocation:
    inv = Invocation()
    setters: Dict[str, Callable[[str], None]] = {
        "module": lambda v: _module_version(inv, v),
        "version": lambda v: setattr(inv, "version", v),
        "kernel": lambda v: _kernel_arch(inv, v),
        "arch": inv.arches.append,
        "template": lambda v: setattr(inv, "template", v),
        "conf": lambda v: setattr(inv, "conf", Path(v)),
        "jobs": lambda v: setattr(inv, "jobs", _jobs(v)),
        "dkms_tree": lambda v: setattr(inv, "dkms_tree", Path(v)),
        "source_tree": lambda v: setattr(inv, "source_tree", Path(v)),
        "install_tree": lambda v: setattr(inv, "install_tree", Path(v)),
        "kernel_source_dir": lambda v: setattr(inv, "kernel_source_dir", Path(v)),
        "directive": lambda v: inv.directives.append(_directive(v)),
        "etc_dir": lambda v: setattr(inv, "etc_dir", Path(v)),
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in VALUE_OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    raise DkmsError(2, f"Option {name} needs a value.", USAGE)
                i += 1
                value = argv[i]
            setters[VALUE_OPTIONS[name]](value)
        elif arg in FLAGS:
            setattr(inv, FLAGS[arg], True)
        elif arg in DEPRECATED:
            warn(f"Deprecated feature: {arg}")
        elif name in UNSUPPORTED:
            raise DkmsError(2, f"Option {name} is not supported by ckms-dkms.", USAGE)
        elif arg.startswith("-"):
            raise DkmsError(2, f"Unknown option: {arg}", USAGE)
        else:
            _word(inv, arg, warn)
        i += 1
    _check(inv)
    return inv


def _word(inv: Invocation, arg: str, warn: Callable[[str], None]) -> None:
    path = Path(arg)
    if arg in ACTIONS or arg in UNSUPPORTED_ACTIONS:
        if inv.action:
            raise DkmsError(4, "Cannot specify more than one action.")
        if arg in UNSUPPORTED_ACTIONS:
            raise DkmsError(2, f"The action {arg} (DKMS tarballs) is not supported by ckms-dkms.")
        inv.action = arg
    elif path.name == "dkms.conf" and path.is_file():
        inv.source_dir = path.parent
    elif path.is_dir() and any((path / f).is_file() for f in ("dkms.conf", "ckms.ini")):
        inv.source_dir = path
    elif path.is_file():
        raise DkmsError(2, f"{arg}: ckms-dkms does not load DKMS tarballs or archives.")
    elif not inv.module:
        _module_version(inv, arg)
    else:
        warn(f"Warning: I do not know how to handle {arg}.")


def _module_version(inv: Invocation, value: str) -> None:
    match = _MV.match(value)
    if match:
        inv.module, inv.version = match.group(1), match.group(2)
    else:
        inv.module = value


def _kernel_arch(inv: Invocation, value: str) -> None:
    match = _MV.match(value)
    if match:
        inv.kernels.append(match.group(1))
        inv.arches.append(match.group(2))
    else:
        inv.kernels.append(value)


def _jobs(value: str) -> int:
    if not value.isdigit():
        raise DkmsError(2, f"-j needs a number, not {value!r}.")
    return int(value)


def _directive(value: str) -> Tuple[str, str]:
    name, eq, val = value.partition("=")
    if not eq or not _DIRECTIVE.match(name):
        raise DkmsError(2, f"--directive needs NAME=VALUE or NAME[i]=VALUE, not {value!r}.")
    return name, val


def _check(inv: Invocation) -> None:
    """DKMS's sanity checks of the command line, with its exit codes."""
    if len(inv.arches) > 1 and len(inv.arches) != len(inv.kernels):
        raise DkmsError(1, "If more than one arch is specified on the command line, then there",
                        "must be an equal number of kernel versions also specified (1:1 relationship).")
    if inv.kernels and inv.all:
        raise DkmsError(2, "You cannot specify a kernel version and also specify",
                        "--all on the command line.")
    if inv.arches and inv.all:
        raise DkmsError(3, "You cannot specify an arch and also specify",
                        "--all on the command line.")
    if len(inv.arches) == 1 and len(inv.kernels) > 1:
        inv.arches *= len(inv.kernels)  # one arch for every kernel
