"""What every operation needs: the configuration, the state tree, the output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Tuple

from .config import Config
from .tree import Tree
from .ui import Output


@dataclass
class Context:
    config: Config
    tree: Tree
    out: Output
    depmod: bool = True
    # digests computed once per command (a source tree, a kernel's headers), shared
    # by the contexts dataclasses.replace() derives from this one
    digests: Dict[Tuple[str, ...], str] = field(default_factory=dict)

    def digest(self, key: Tuple[str, ...], compute: Callable[[], str]) -> str:
        if key not in self.digests:
            self.digests[key] = compute()
        return self.digests[key]

    @property
    def real_destdir(self) -> bool:
        """True when installing into the system's module directory."""
        return self.config.destdir.resolve() == Path("/lib/modules").resolve()
