"""Facts about a target kernel, read from its own files.

Nothing here looks at the running system except to choose the default kernel
version and machine: the compiler, linker, module compression and signing hash
all come from the target's ``.config``, so building for a kernel that is not
running works exactly like building for the one that is.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import KernelError
from .model import check_kernel_version

MODULES_ROOT = Path("/lib/modules")
COMPRESSIONS = {"gz": ".gz", "xz": ".xz", "zst": ".zst"}


def machine_to_arch(machine: str) -> str:
    """Kernel source architecture (ARCH=) for a ``uname -m`` machine name."""
    for prefix, arch in (("aarch64", "arm64"), ("arm", "arm"), ("ppc", "powerpc"),
                         ("riscv", "riscv"), ("mips", "mips"), ("s390", "s390"),
                         ("sparc", "sparc"), ("parisc", "parisc"), ("loongarch", "loongarch"),
                         ("sh", "sh")):
        if machine.startswith(prefix):
            return arch
    if fnmatch.fnmatch(machine, "i?86") or machine == "x86_64":
        return "x86"
    return machine


def headers_hint(kver: str) -> str:
    """What to install to get headers for kver, on this distribution."""
    if Path("/etc/debian_version").exists():
        return f"install the package linux-headers-{kver}"
    return f"install the kernel headers for {kver}"


@dataclass(frozen=True)
class Kernel:
    version: str
    machine: str
    hdrdir: Path  # the kbuild tree (/lib/modules/<kver>/build)
    moddir: Path  # the kernel's real module directory (/lib/modules/<kver>)

    @classmethod
    def find(cls, version: Optional[str] = None, machine: Optional[str] = None,
             hdrdir: Optional[Path] = None, modules_root: Path = MODULES_ROOT) -> Kernel:
        kver = check_kernel_version(version or os.uname().release)
        return cls(
            version=kver,
            machine=machine or os.uname().machine,
            hdrdir=hdrdir or modules_root / kver / "build",
            moddir=modules_root / kver,
        )

    @property
    def arch(self) -> str:
        return machine_to_arch(self.machine)

    def require_headers(self) -> None:
        if not (self.hdrdir / "Makefile").is_file():
            raise KernelError(
                f"no kernel headers for {self.version} in {self.hdrdir}: "
                f"{headers_hint(self.version)}"
            )

    @functools.cached_property
    def config(self) -> Dict[str, str]:
        """The kernel's .config as a dict (unset options are absent)."""
        result: Dict[str, str] = {}
        try:
            with open(self.hdrdir / ".config", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("CONFIG_"):
                        key, _, value = line.rstrip("\n").partition("=")
                        result[key] = value.strip('"') if value.startswith('"') else value
        except OSError:
            pass
        return result

    def make_args(self) -> List[str]:
        """Toolchain arguments kbuild needs to match how the kernel was built."""
        cfg = self.config
        args: List[str] = []
        if cfg.get("CONFIG_CC_IS_CLANG") == "y":
            args.append("LLVM=1")
            args.append("LLVM_IAS=0" if cfg.get("CONFIG_AS_IS_GNU") == "y" else "LLVM_IAS=1")
        if cfg.get("CONFIG_LD_IS_LLD") == "y":
            args.append("LD=ld.lld")
        elif cfg.get("CONFIG_LD_IS_BFD") == "y" and cfg.get("CONFIG_CC_IS_CLANG") == "y":
            args.append("LD=ld.bfd")
        return args

    def compression(self) -> str:
        """Suffix ('', '.gz', '.xz', '.zst') modules of this kernel are stored with.

        From .config when it says; else from the kernel's own modules; else none.
        """
        cfg = self.config
        for name, sfx in (("XZ", ".xz"), ("ZSTD", ".zst"), ("GZIP", ".gz")):
            if cfg.get(f"CONFIG_MODULE_COMPRESS_{name}") == "y":
                return sfx
        if cfg.get("CONFIG_MODULE_COMPRESS_NONE") == "y" or cfg.get("CONFIG_MODULES") == "y":
            return ""
        return self._compression_from_modules()

    def _compression_from_modules(self) -> str:
        try:
            with open(self.moddir / "modules.dep", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    head = line.split(":", 1)[0]
                    for sfx in (".xz", ".zst", ".gz"):
                        if head.endswith(".ko" + sfx):
                            return sfx
                    if head.endswith(".ko"):
                        return ""
        except OSError:
            pass
        return ""

    @property
    def sig_hash(self) -> str:
        return self.config.get("CONFIG_MODULE_SIG_HASH", "sha256")

    def sign_file(self) -> Optional[Path]:
        """The kernel's sign-file tool (Debian: from linux-kbuild-X.Y)."""
        tool = self.hdrdir / "scripts" / "sign-file"
        if tool.is_file() and os.access(tool, os.X_OK):
            return tool
        found = shutil.which("kmodsign")
        return Path(found) if found else None

    def own_signing_key(self) -> Optional[tuple[Path, Path]]:
        """The key the kernel was built with, when its headers carry it."""
        keyname = self.config.get("CONFIG_MODULE_SIG_KEY", "certs/signing_key.pem")
        key = self.hdrdir / keyname
        if key.suffix == ".pem" and key.is_file():
            cert = key.with_name("signing_key.x509")
            return (key, cert if cert.is_file() else key)
        return None

    def system_map(self) -> Optional[Path]:
        for cand in (Path("/boot") / f"System.map-{self.version}", self.hdrdir / "System.map"):
            if cand.is_file():
                return cand
        return None
