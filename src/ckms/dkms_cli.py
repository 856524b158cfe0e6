"""The ``ckms-dkms`` command: DKMS 3.x's command language over ckms, see ckms-dkms(8).

``status`` only reads the tree (and imports little, to stay fast); every
other action goes through ``ckms.dkms.actions``.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from . import __version__
from .dkms import DKMS_VERSION, DkmsError, DkmsOutput, exit_code
from .dkms.args import USAGE, Invocation, parse
from .dkms.framework import Locations, locations, read_framework
from .dkms.status import scan
from .errors import CkmsError
from .ui import failure_code


def main(argv: Optional[List[str]] = None) -> int:
    out = DkmsOutput()
    try:
        inv = parse(sys.argv[1:] if argv is None else argv, out.notice)
        if inv.quiet:  # DKMS: exec >/dev/null 2>&1
            devnull = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
            out = DkmsOutput(stream=devnull, errstream=devnull)
        else:
            out = DkmsOutput(verbose=inv.verbose)
        return run(inv, out)
    except (CkmsError, OSError, KeyboardInterrupt) as exc:
        return failure_code(out, exc, exit_code)


def run(inv: Invocation, out: DkmsOutput) -> int:
    if inv.help:
        out.info(USAGE)
        return 0
    if inv.show_version:
        out.info(f"dkms-{DKMS_VERSION}\nckms-dkms {__version__}: ckms's DKMS-compatible front end")
        return 0
    if not inv.action:
        raise DkmsError(2, "No action specified.", USAGE)
    where = locations(inv, read_framework(inv.etc_dir, out.warn))
    if inv.action == "status":
        return status(inv, where, out)
    from .dkms.actions import run as run_action
    return run_action(inv, where, out)


def status(inv: Invocation, where: Locations, out: DkmsOutput) -> int:
    """DKMS's show_status: every kernel given with -k in turn, or all of them."""
    kernels = list(zip(inv.kernels, inv.arches or [""] * len(inv.kernels))) or \
        [("", inv.arches[0] if inv.arches else "")]
    lines = [entry.line() for kver, arch in kernels
             for entry in scan(where.dkms_tree, where.install_tree, inv.module, inv.version,
                               kver, arch)]
    if lines:
        out.info("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
