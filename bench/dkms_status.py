#!/usr/bin/env python3
"""`dkms status` of the real DKMS 3.0.10 against ckms's dkms front end, on one tree.

The script lays out a DKMS tree of 36 packages x 2 kernels by hand, the way
DKMS leaves it on Debian: ``<dkmstree>/<name>/<version>/source`` links to
``<sourcetree>/<name>-<version>`` holding a dkms.conf (plain ones, and ones
that compute their directives with shell as real files do), built modules in
``<version>/<kver>/<arch>/module/``, ``kernel-<kver>-<arch>`` links for the
installed ones, the modules themselves under ``<installtree>/<kver>/updates/dkms``
(Debian's DEST_MODULE_LOCATION override), some ``original_module`` archives,
one installed module that differs from its build, packages only built, only
added, and with two versions.  The ``.ko`` files are small fakes: status
compares them, it never loads them.

Then it times, interleaved, each a new process with the same options
(``status --dkmstree T --sourcetree S --installtree I``):

* ``/usr/sbin/dkms status ...`` (the real DKMS),
* ``python3 -m ckms.dkms_cli status ...`` (ckms's front end),

prints the medians and the ratio (target: ckms at least 100x faster), and
checks that both print the same lines in the same order.

    python3 bench/dkms_status.py [-n RUNS] [--packages N] [--kernels N] [--python PATH] [--keep]
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (after the sys.path line)
    child_env,
    describe_bytecode,
    fmt_ms,
    header,
    load_note,
    scratch_dir,
    summary,
    time_interleaved,
)

TARGET_RATIO = 100.0
DKMS = "/usr/sbin/dkms"
ARCH = os.uname().machine

# Two styles of dkms.conf, as found in Debian's *-dkms packages.
PLAIN_CONF = """\
PACKAGE_NAME="{name}"
PACKAGE_VERSION="{version}"
CLEAN="make clean"
MAKE[0]="make -C ${{kernel_source_dir}} M=${{dkms_tree}}/${{PACKAGE_NAME}}/${{PACKAGE_VERSION}}/build modules"
{modules}AUTOINSTALL="yes"
"""
PLAIN_MODULE = 'BUILT_MODULE_NAME[{i}]="{mod}"\nDEST_MODULE_LOCATION[{i}]="/kernel/drivers/misc"\n'

SHELL_CONF = """\
PACKAGE_NAME={name}
PACKAGE_VERSION={version}
MAKE[0]="make -j$(nproc) KVER=$kernelver KSRC=$kernel_source_dir"
case "$kernelver" in
    2.*|3.*) BUILD_EXCLUSIVE_KERNEL="^never" ;;
esac
if [ -f "$kernel_source_dir/.config" ]; then
    . "$kernel_source_dir/.config"
fi
i=0
for m in {mods}; do
    BUILT_MODULE_NAME[$i]=$m
    BUILT_MODULE_LOCATION[$i]=src/
    DEST_MODULE_LOCATION[$i]=/extra
    i=$((i+1))
done
AUTOINSTALL=yes
"""


class Layout:
    """The three trees a DKMS command takes: --dkmstree, --sourcetree, --installtree."""

    def __init__(self, base: Path) -> None:
        self.dkms = base / "dkms"
        self.src = base / "src"
        self.install = base / "modules"

    def options(self) -> List[str]:
        return ["--dkmstree", str(self.dkms), "--sourcetree", str(self.src),
                "--installtree", str(self.install)]


def modules_of(i: int) -> List[str]:
    return [f"bench_dkms{i:02d}_{m}" for m in range(1 + i % 3)]


def add(lay: Layout, i: int, name: str, version: str) -> None:
    mods = modules_of(i)
    src = lay.src / f"{name}-{version}"
    src.mkdir(parents=True)
    if i % 3 == 2:
        conf = SHELL_CONF.format(name=name, version=version, mods=" ".join(mods))
    else:
        conf = PLAIN_CONF.format(name=name, version=version, modules="".join(
            PLAIN_MODULE.format(i=n, mod=m) for n, m in enumerate(mods)))
    (src / "dkms.conf").write_text(conf)
    verdir = lay.dkms / name / version
    verdir.mkdir(parents=True)
    (verdir / "source").symlink_to(src)


def build(lay: Layout, i: int, name: str, version: str, kver: str) -> None:
    built = lay.dkms / name / version / kver / ARCH
    (built / "module").mkdir(parents=True)
    (built / "log").mkdir()
    (built / "log" / "make.log").write_text(f"DKMS make.log for {name}-{version} for kernel {kver}\n")
    for mod in modules_of(i):
        (built / "module" / f"{mod}.ko").write_bytes(f"{mod} {version} {kver}\n".encode())


def install(lay: Layout, i: int, name: str, version: str, kver: str, differ: bool) -> None:
    built = lay.dkms / name / version / kver / ARCH
    dest = lay.install / kver / "updates" / "dkms"
    dest.mkdir(parents=True, exist_ok=True)
    for n, mod in enumerate(modules_of(i)):
        data = (built / "module" / f"{mod}.ko").read_bytes()
        (dest / f"{mod}.ko").write_bytes(data + b"changed\n" if differ and n == 0 else data)
    (lay.dkms / name / f"kernel-{kver}-{ARCH}").symlink_to(f"{version}/{kver}/{ARCH}")


def make_tree(lay: Layout, npkgs: int, kernels: List[str]) -> Dict[str, int]:
    """The tree; returns how many packages of each kind it holds."""
    kinds: Dict[str, int] = {}
    for i in range(npkgs):
        name, version = f"bench-dkms{i:02d}", f"{1 + i % 4}.{i}"
        add(lay, i, name, version)
        if i % 6 == 4:  # an older version, only added
            add(lay, i, name, f"0.{i}")
            kinds["two versions"] = kinds.get("two versions", 0) + 1
        if i % 12 == 11:
            kinds["added only"] = kinds.get("added only", 0) + 1
            continue
        for k, kver in enumerate(kernels):
            build(lay, i, name, version, kver)
            if i % 12 == 10:
                continue
            if i % 7 == 3 and k == 0:  # it replaced a module of the kernel
                orig = lay.dkms / name / "original_module" / kver / ARCH
                orig.mkdir(parents=True)
                (orig / f"{modules_of(i)[0]}.ko").write_bytes(b"the kernel's own module\n")
            install(lay, i, name, version, kver, differ=(i == 5 and k == 0))
        kind = "built only" if i % 12 == 10 else "installed"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def compare(dkms_out: str, ckms_out: str) -> Optional[str]:
    """None when both printed the same lines; else a unified diff."""
    if dkms_out == ckms_out:
        return None
    return "".join(difflib.unified_diff(dkms_out.splitlines(True), ckms_out.splitlines(True),
                                        "dkms status", "ckms.dkms_cli status"))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=5,
                    help="timed runs of each command (default 5; DKMS takes seconds per run)")
    ap.add_argument("--packages", type=int, default=36, help="packages in the tree (default 36)")
    ap.add_argument("--kernels", type=int, default=2, help="fake kernels (default 2)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the ckms processes (default: the one running this)")
    ap.add_argument("--keep", action="store_true", help="keep the trees and print where")
    args = ap.parse_args(argv)
    if not os.access(DKMS, os.X_OK):
        sys.exit(f"{DKMS} is not installed: apt-get install dkms (the reference, 3.0.10)")

    print(load_note())
    with scratch_dir("ckms-bench-dkms-status-", args.keep, "trees") as base:
        return run(args, base)


def run(args: argparse.Namespace, base: Path) -> int:
    kernels = [f"9.0.{k}-bench-amd64" for k in range(args.kernels)]
    lay = Layout(base)
    kinds = make_tree(lay, args.packages, kernels)
    header(f"tree: {args.packages} packages x {len(kernels)} kernels ({', '.join(kernels)})")
    print(", ".join(f"{n} {kind}" for kind, n in kinds.items()))
    print(f"dkms tree {lay.dkms}, source tree {lay.src}, install tree {lay.install}")

    env = child_env()
    commands = {
        "dkms status (DKMS 3.0.10)": [DKMS, "status", *lay.options()],
        "ckms.dkms_cli status": [args.python, "-m", "ckms.dkms_cli", "status", *lay.options()],
    }
    header(f"wall time over {args.runs} runs each (new processes, interleaved, after a warm-up)")
    print(f"interpreter: {args.python}; {describe_bytecode(env)}")
    timed = time_interleaved(commands, args.runs, env)
    stats = {label: summary(times) for label, (times, _out) in timed.items()}
    for label, st in stats.items():
        print(f"{label:<28} {fmt_ms(st)}")

    header("output")
    (dkms_label, (_t, dkms_out)), (ckms_label, (_t2, ckms_out)) = timed.items()
    print(f"{dkms_label}: {len(dkms_out.splitlines())} lines; "
          f"{ckms_label}: {len(ckms_out.splitlines())} lines")
    diff = compare(dkms_out, ckms_out)
    print("the same lines in the same order" if diff is None else f"they differ:\n{diff}")

    header("result")
    dkms_ms, ckms_ms = stats[dkms_label]["median"], stats[ckms_label]["median"]
    ratio = dkms_ms / ckms_ms
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"medians: dkms {dkms_ms:.0f} ms, ckms.dkms_cli {ckms_ms:.1f} ms: ckms is {ratio:.0f}x "
          f"faster ({verdict} the {TARGET_RATIO:.0f}x target)")
    print(f"at the end: {load_note()}")
    if diff is not None:
        print("error: the two status outputs differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
