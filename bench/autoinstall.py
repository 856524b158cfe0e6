#!/usr/bin/env python3
"""`autoinstall` of real Debian *-dkms packages for one kernel: DKMS 3.0.10 against ckms.

Both sides get the same job, the one a kernel package's postinst hook gives
them: every package is added (not timed), then ``autoinstall -k KVER`` builds
and installs all of them (timed, wall clock, one new process).

* DKMS: ``/usr/sbin/dkms autoinstall -k KVER --dkmstree D --sourcetree S``
* ckms: ``python3 -m ckms.dkms_cli autoinstall -k KVER --dkmstree D --sourcetree S``
  (ckms's dkms front end, the drop-in for the same command line)

Honest depmod.  Each run happens in its own mount namespace (``unshare -m``,
private propagation) where a fresh staging directory is bind-mounted over
/lib/modules and another over /var/lib/dkms (DKMS reads its signing key from
there whatever --dkmstree says).  The staging /lib/modules/KVER holds the
kernel's real module tree (a read-only bind mount of the real one), its
modules.* files and its build link.  So both tools install into
"/lib/modules" as they would on a real system, and both run the real depmod
over the kernel's thousands of modules, without touching the host.  A
``depmod`` wrapper first on PATH logs every call (and its duration) before
running the real one: the counts and the time depmod took are printed per side.
A signing key is made once and put in both staging trees, as after DKMS's
first use (both sides then sign, as DKMS 3.0.10 does on Debian).

The packages come from apt-get download, unpacked and never installed
(tests/corpus/packages.py).  Default: five bookworm packages that build on
bookworm's own 6.1 kernel (most do not build on the 6.12 backports kernels),
so the default kernel is the oldest one with headers.  Needs root (mounts).
Target: ckms at least 1.5x faster, one depmod per kernel.

    python3 bench/autoinstall.py [-k KVER] [-n ROUNDS] [--packages a-dkms,b-dkms] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, check, child_env, header, load_note, real_kernels, scratch_dir, timed_run  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.corpus.packages import Source, source  # noqa: E402  (the corpus test's fetcher)

TARGET_RATIO = 1.5
DKMS = "/usr/sbin/dkms"
PACKAGES = ("acpi-call-dkms", "tp-smapi-dkms", "v4l2loopback-dkms", "falcosecurity-scap-dkms",
            "xtables-addons-dkms")

# Runs "$@" with staging dirs mounted over /lib/modules and /var/lib/dkms, in a
# private mount namespace: $1 kernel, $2 staging module root, $3 staging dkms tree.
NAMESPACE_SCRIPT = """\
set -e
kver=$1 modules=$2 dkms=$3
shift 3
mount --bind "/lib/modules/$kver/kernel" "$modules/$kver/kernel"
mount -o remount,bind,ro "$modules/$kver/kernel"
mount --rbind "$modules" /lib/modules
mount --bind "$dkms" /var/lib/dkms
exec "$@"
"""

DEPMOD_WRAPPER = """\
#!/bin/sh
# bench/autoinstall.py: log each depmod call (start, end, status, arguments), then run it
start=$(date +%s.%N)
{depmod} "$@"
rc=$?
echo "$start $(date +%s.%N) $rc $*" >> {log}
exit $rc
"""


@dataclass
class Run:
    side: str
    secs: float
    cpu: float  # user + system seconds of the whole process tree
    exit: int
    depmods: List[str]  # the logged calls
    depmod_secs: float
    installed: List[str]  # files the run added under /lib/modules/KVER
    unknown_to_depmod: List[str]  # of those, the ones missing from modules.dep afterwards
    output: str


class Side:
    """One tool's command line, with everything but the kernel and the trees."""

    def __init__(self, name: str, argv: List[str]) -> None:
        self.name = name
        self.argv = argv

    def command(self, action: str, *args: str, dkms_tree: Path, sources: Path) -> List[str]:
        return [*self.argv, action, *args, "--dkmstree", str(dkms_tree), "--sourcetree", str(sources)]


def stage_kernel(modules: Path, kver: str) -> None:
    """A staging module root for kver: a mount point for its modules, its files, its links."""
    real = Path("/lib/modules") / kver
    kdir = modules / kver
    (kdir / "kernel").mkdir(parents=True)
    for entry in real.iterdir():
        if entry.is_symlink():  # build, source
            (kdir / entry.name).symlink_to(os.readlink(entry))
        elif entry.is_file() and entry.name.startswith("modules."):
            shutil.copy2(entry, kdir / entry.name)


def signing_key(base: Path) -> List[Path]:
    """A MOK key pair as DKMS 3.0.10 makes it on first use (mok.key, mok.pub)."""
    key, pub = base / "mok.key", base / "mok.pub"
    subprocess.run(["openssl", "req", "-new", "-x509", "-nodes", "-days", "36500",
                    "-subj", "/CN=DKMS module signing key", "-newkey", "rsa:2048",
                    "-keyout", str(key), "-outform", "DER", "-out", str(pub)],
                   check=True, capture_output=True)
    return [key, pub]


def unpack_all(packages: List[str], base: Path) -> Tuple[Path, List[Source]]:
    """Unpack every package; move their sources into one source tree (DKMS's /usr/src)."""
    srctree = base / "usr-src"
    srctree.mkdir()
    sources = []
    for package in packages:
        src = source(package, base / "unpacked" / package)
        src.srcdir.rename(srctree / src.srcdir.name)
        sources.append(dataclasses.replace(src, srcdir=srctree / src.srcdir.name))
    return srctree, sources


def one_run(side: Side, base: Path, kver: str, srctree: Path, sources: List[Source],
            key: List[Path], env: Dict[str, str]) -> Run:
    """Add every package to a fresh staging tree, then time autoinstall -k kver."""
    work = Path(tempfile.mkdtemp(prefix=f"{side.name}-", dir=base))
    work.chmod(0o755)
    dkms_tree, modules, bindir = work / "dkms", work / "modules", work / "bin"
    for d in (dkms_tree, bindir):
        d.mkdir()
    stage_kernel(modules, kver)
    for f in key:
        shutil.copy2(f, dkms_tree / f.name)
    log = work / "depmod.log"
    real_depmod = shutil.which("depmod", path=env["PATH"] + ":/usr/sbin:/sbin")
    if real_depmod is None:
        sys.exit("depmod not found: apt-get install kmod")
    (bindir / "depmod").write_text(DEPMOD_WRAPPER.format(depmod=real_depmod, log=log))
    (bindir / "depmod").chmod(0o755)
    for src in sources:
        _, proc = timed_run(side.command("add", "-m", src.name, "-v", src.version,
                                         dkms_tree=dkms_tree, sources=srctree), env)
        check(proc, f"{side.name} add {src.name}/{src.version}")

    runenv = {**env, "PATH": f"{bindir}:{env['PATH']}"}
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT, "sh",
            kver, str(modules), str(dkms_tree),
            *side.command("autoinstall", "-k", kver, dkms_tree=dkms_tree, sources=srctree)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    secs, proc = timed_run(argv, runenv)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    calls = log.read_text().splitlines() if log.exists() else []
    depmod_secs = sum(float(c.split()[1]) - float(c.split()[0]) for c in calls)
    kdir = modules / kver
    installed = sorted(str(p.relative_to(kdir)) for p in kdir.rglob("*.ko*")
                       if p.relative_to(kdir).parts[0] != "kernel")
    return Run(side.name, secs, cpu, proc.returncode, [" ".join(c.split()[3:]) for c in calls],
               depmod_secs, installed, not_in_modules_dep(kdir / "modules.dep", installed),
               proc.stdout + proc.stderr)


def not_in_modules_dep(modules_dep: Path, installed: Sequence[str]) -> List[str]:
    """The installed modules depmod does not know about (no depmod ran after them)."""
    known = {line.split(":", 1)[0] for line in modules_dep.read_text().splitlines()}
    return [f for f in installed if f not in known]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--kernver", help="kernel (default: the oldest with headers, bookworm's own)")
    ap.add_argument("-n", "--rounds", type=int, default=1,
                    help="rounds; each runs both sides, taking turns at going first (default 1)")
    ap.add_argument("--packages", default=",".join(PACKAGES),
                    help=f"comma-separated *-dkms packages (default: {','.join(PACKAGES)})")
    ap.add_argument("--keep", action="store_true", help="keep the staging trees and print where")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/autoinstall.py needs root: it mounts staging trees in a private namespace")
    if not os.access(DKMS, os.X_OK):
        sys.exit(f"{DKMS} is not installed: apt-get install dkms (the reference, 3.0.10)")
    kernels = real_kernels()
    kver = args.kernver or (kernels[0] if kernels else "")
    if kver not in kernels:
        sys.exit(f"no kernel headers for {kver or 'any kernel'} under /lib/modules")

    print(load_note())
    with scratch_dir("ckms-bench-autoinstall-", args.keep, "staging trees", "/var/tmp") as base:
        base.chmod(0o755)  # ckms reads a dkms.conf as an unprivileged user
        return run(args, base, kver)


def run(args: argparse.Namespace, base: Path, kver: str) -> int:
    names = [p for p in args.packages.split(",") if p]
    header(f"packages for {kver}: fetched with apt-get download, unpacked, never installed")
    srctree, sources = unpack_all(names, base)
    for src in sources:
        print(f"{src.package} {src.deb_version}: {src.name}/{src.version}")
    key = signing_key(base)
    env = child_env()
    sides = [Side("dkms", [DKMS]), Side("ckms", [sys.executable, "-m", "ckms.dkms_cli"])]

    header(f"autoinstall -k {kver}: {args.rounds} round(s), wall time of one process each")
    runs: Dict[str, List[Run]] = {s.name: [] for s in sides}
    ok = True
    for rnd in range(args.rounds):
        for side in sides if rnd % 2 == 0 else reversed(sides):
            r = one_run(side, base, kver, srctree, sources, key, env)
            runs[side.name].append(r)
            print(f"round {rnd + 1} {side.name}: {r.secs:6.1f} s (CPU {r.cpu:5.1f} s), exit {r.exit}, "
                  f"{len(r.depmods)} depmod ({r.depmod_secs:.1f} s), {len(r.installed)} modules installed")
            if r.exit != 0:
                ok = False
                print(f"--- {side.name} output (last 40 lines)\n" + "\n".join(r.output.splitlines()[-40:]))

    header("what each side did (last round)")
    last = {name: rs[-1] for name, rs in runs.items()}
    for name, r in last.items():
        print(f"{name}: depmod calls: {r.depmods or 'none'}")
        print(f"{name}: installed {', '.join(r.installed)}")
        if r.unknown_to_depmod:
            ok = False
            print(f"error: {name}: not in modules.dep: {', '.join(r.unknown_to_depmod)}")
    only = {name: sorted(set(r.installed) - set(last[other].installed))
            for (name, r), other in zip(last.items(), reversed(list(last)))}
    if any(only.values()):  # a difference in behaviour, not a failed measurement
        print("warning: the two sides installed different files; only by "
              + "; only by ".join(f"{name}: {', '.join(files)}" for name, files in only.items() if files))
    else:
        print("both installed the same files")

    header("result")
    med = {name: statistics.median(r.secs for r in rs) for name, rs in runs.items()}
    ratio = med["dkms"] / med["ckms"]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    depmods = {name: sorted({len(r.depmods) for r in rs}) for name, rs in runs.items()}
    print(f"median wall time: dkms {med['dkms']:.1f} s, ckms {med['ckms']:.1f} s: ckms is "
          f"{ratio:.2f}x faster ({verdict} the {TARGET_RATIO}x target)")
    print(f"depmod calls per autoinstall: dkms {depmods['dkms']}, ckms {depmods['ckms']} "
          f"(target for ckms: [1])")
    print(f"at the end: {load_note()}")
    if not ok:
        print("error: a run failed, or depmod did not see what it installed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
