"""What every operation needs: the configuration, the state tree, the output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .tree import Tree
from .ui import Output


@dataclass
class Context:
    config: Config
    tree: Tree
    out: Output
    depmod: bool = True

    @property
    def real_destdir(self) -> bool:
        """True when installing into the system's module directory."""
        return self.config.destdir.resolve() == Path("/lib/modules").resolve()
