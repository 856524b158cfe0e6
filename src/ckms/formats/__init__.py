"""Package definition formats, each parsed into the one package model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..model import Package
from .ckms_ini import load_ckms_ini

DEFINITION_NAMES = ("ckms.ini",)


def find_definition(srcdir: Path) -> Path:
    """The package definition in a source tree."""
    for name in DEFINITION_NAMES:
        cand = srcdir / name
        if cand.is_file():
            return cand
    raise ConfigError(f"{srcdir}: no {' or '.join(DEFINITION_NAMES)} found; "
                      "pass the definition with -c FILE")


def load_definition(path: Path, warn: Callable[[str], None]) -> Package:
    return load_ckms_ini(path, warn)
