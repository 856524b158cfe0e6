"""The global configuration (``/etc/ckms/config.ini``), see ckms-config.ini(5).

A missing file is fine: every option has a default.  Command-line options
override the file.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional

from .errors import ConfigError
from .formats.ckms_ini import parse_bool
from .formats.ini import read_ini

DEFAULT_CONFIG = Path("/etc/ckms/config.ini")

CKMS_KEYS = (
    "statedir", "destdir", "quiet", "strip", "initramfs_hook", "depmod_hook",
    "make_build_args", "sign_key", "sign_cert", "lock_timeout", "jobs", "compression",
)


@dataclass(frozen=True)
class Config:
    statedir: Path = Path("/var/lib/ckms")
    destdir: Path = Path("/lib/modules")
    quiet: bool = False
    strip: str = "strip -g"
    initramfs_hook: Optional[Path] = Path("/etc/ckms/refresh-initramfs.sh")
    depmod_hook: Optional[Path] = None
    make_build_args: str = ""
    sign_key: Optional[Path] = None
    sign_cert: Optional[Path] = None
    lock_timeout: float = 600.0
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    compression: Optional[str] = None
    build_env: Dict[str, str] = field(default_factory=dict)

    def with_options(self, **changes: object) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


def load_config(path: Path, warn: Callable[[str], None], required: bool = False) -> Config:
    if not path.exists() and not required:
        return Config()
    ini = read_ini(path)
    cfg = Config()
    opts: Dict[str, object] = {}
    sect = ini.sections.get("ckms")
    for sname, s in ini.sections.items():
        if sname not in ("ckms", "build_env"):
            warn(f"{path}:{s.line}: unknown section [{sname}] ignored")
    if sect is not None:
        for key, entry in sect.entries.items():
            where = f"{path}:{entry.line}"
            val = entry.value
            if key not in CKMS_KEYS:
                warn(f"{where}: unknown key {key!r} in [ckms] ignored")
            elif key == "quiet":
                opts[key] = parse_bool(val, where, allow_shell=False)
            elif key == "compression":
                if val and val not in ("gz", "xz", "zst"):
                    raise ConfigError(f"{where}: compression must be gz, xz or zst, not {val!r}")
                opts[key] = val or None
            elif key == "strip":
                try:
                    if not shlex.split(val):
                        raise ValueError("empty")
                except ValueError as exc:
                    raise ConfigError(f"{where}: strip command {val!r}: {exc}") from None
                opts[key] = val
            elif key == "make_build_args":
                opts[key] = val
            elif key in ("statedir", "destdir"):
                if not val:
                    raise ConfigError(f"{where}: {key} must not be empty")
                opts[key] = Path(val)
            elif key == "lock_timeout":
                opts[key] = _number(val, where, float)
            elif key == "jobs":
                opts[key] = _number(val, where, int)
            else:
                opts[key] = Path(val) if val else None
    if "build_env" in ini.sections:
        opts["build_env"] = {e.name: e.value for e in ini.sections["build_env"].entries.values()}
    return replace(cfg, **opts)  # type: ignore[arg-type]  # values checked per key above


def _number(val: str, where: str, kind: Callable[[str], float]) -> float:
    try:
        num = kind(val)
    except ValueError:
        raise ConfigError(f"{where}: {val!r} is not a number") from None
    if num <= 0:
        raise ConfigError(f"{where}: {val!r} must be positive")
    return num
