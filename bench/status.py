#!/usr/bin/env python3
"""How long `ckms status` takes on a tree of 40 packages x 3 kernels, all installed.

The tree is made with the real ckms commands (add, build, install -d) against
three fake kernels (9.0.0-bench1..3) that share a fake headers directory (a
Makefile and a .config with CONFIG_MODULES=y, passed with --hdrdir).  Each
package's build hook just writes small fake .ko files, so making the tree takes
seconds, not hours.  The operations run in this process (ckms.cli.main) to
save 280 interpreter start-ups; the timed status runs are separate processes,
``python3 -m ckms -s STATE status``, as a user runs them.

Target on the reference machine (2 cores): median under 100 ms.

    python3 bench/status.py [-n RUNS] [--packages N] [--kernels N] [--setup-cli] [--keep]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (after the sys.path line)
    check,
    child_env,
    ckms_argv,
    ckms_inprocess,
    describe_bytecode,
    fmt_ms,
    header,
    load_note,
    real_kernels,
    scratch_dir,
    summary,
    time_interleaved,
    timed_run,
)

TARGET_MS = 100.0
VERSION = "1.0"


def package_name(i: int) -> str:
    return f"bench-pkg{i:02d}"


def make_headers(base: Path) -> Path:
    """A fake kbuild tree: enough for ckms to accept it as a kernel's headers."""
    hdr = base / "headers"
    hdr.mkdir(parents=True)
    (hdr / "Makefile").write_text("# fake kernel headers for bench/status.py\nmodules:\n")
    (hdr / ".config").write_text("CONFIG_MODULES=y\nCONFIG_MODULE_COMPRESS_NONE=y\n")
    return hdr


def make_package(base: Path, i: int) -> Path:
    """A package with 1-3 modules whose build hook writes fake .ko files."""
    name = package_name(i)
    mods = [f"bench_p{i:02d}_m{m}" for m in range(1 + i % 3)]
    src = base / "src" / name
    src.mkdir(parents=True)
    lines = ["[general]", f"name = {name}", f"version = {VERSION}", "strip = no", "",
             "[hooks]", "build = " + "; ".join(f"printf x > {m}.ko" for m in mods), ""]
    for mod in mods:
        lines += [f"[module.{mod}]", "path = .", "dest = extra/bench", ""]
    (src / "ckms.ini").write_text("\n".join(lines))
    return src


def setup_commands(base: Path, npkgs: int, kernels: Sequence[str]) -> List[List[str]]:
    """Every ckms command that makes the tree, in order."""
    state, dest, hdr = base / "state", base / "destdir", base / "headers"
    common = ["-s", str(state), "-q", "-L"]
    cmds = [[*common, "add", str(make_package(base, i))] for i in range(npkgs)]
    for kver in kernels:
        kopts = [*common, "-k", kver, "--hdrdir", str(hdr)]
        for i in range(npkgs):
            ref = f"{package_name(i)}={VERSION}"
            cmds.append([*kopts, "build", ref])
            cmds.append([*kopts, "-d", str(dest), "install", ref])
    return cmds


def make_tree(base: Path, npkgs: int, kernels: Sequence[str], via_cli: bool,
              env: Dict[str, str]) -> float:
    """Create the state tree with the real ckms; returns the seconds it took."""
    (base / "state").mkdir()
    (base / "destdir").mkdir()
    make_headers(base)
    cmds = setup_commands(base, npkgs, kernels)
    start = time.perf_counter()
    for args in cmds:
        if via_cli:
            _, proc = timed_run(ckms_argv(*args), env)
            check(proc, "ckms " + " ".join(args))
        else:
            rc = ckms_inprocess(args)
            if rc != 0:
                sys.exit(f"ckms {' '.join(args)} exited {rc} (run it by hand to see why)")
    return time.perf_counter() - start


def inprocess_status(state: Path, runs: int) -> List[float]:
    """The status scan alone (Tree.status), without interpreter start-up and imports."""
    import os

    from ckms.tree import Tree

    tree = Tree(state)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        tree.status(default_arch=os.uname().machine)
        times.append(time.perf_counter() - start)
    return times


def import_profile(argv: List[str], env: Dict[str, str], top: int = 8) -> str:
    """The costliest imports of one run, as `-X importtime` reports them."""
    _, proc = timed_run([argv[0], "-X", "importtime", *argv[1:]], env)
    check(proc, " ".join(argv))
    rows: List[tuple[int, int, str, bool]] = []  # cumulative us, self us, module, top level
    for line in proc.stderr.splitlines():
        fields = line[len("import time:"):].split("|") if line.startswith("import time:") else []
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        rows.append((int(fields[1]), int(fields[0]), name.strip(), name.startswith(" ") and
                     not name.startswith("  ")))
    total = sum(cum for cum, _self, _name, top_level in rows if top_level)
    out = [f"all imports: {total / 1000:.1f} ms (-X importtime itself slows them down)",
           "  cumulative      self  module"]
    ours = sorted((r for r in rows if r[2].startswith("ckms")), reverse=True)[:top]
    theirs = sorted((r for r in rows if not r[2].startswith("ckms")), reverse=True)[:top]
    for cum, selfus, name, _top in ours + theirs:
        out.append(f"  {cum / 1000:7.1f} ms {selfus / 1000:6.1f} ms  {name}")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=30, help="timed runs per command (default 30)")
    ap.add_argument("--packages", type=int, default=40, help="packages in the tree (default 40)")
    ap.add_argument("--kernels", type=int, default=3, help="fake kernels (default 3)")
    ap.add_argument("--setup-cli", action="store_true",
                    help="make the tree with one `python3 -m ckms` process per command")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the timed processes (default: the one running this)")
    ap.add_argument("--no-pyc-cache", action="store_true",
                    help="keep the environment's PYTHONDONTWRITEBYTECODE (default: cache .pyc files)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree and print where")
    args = ap.parse_args(argv)

    kernels = [f"9.0.0-bench{k + 1}" for k in range(args.kernels)]
    print(load_note())
    env = child_env(bytecode_cache=not args.no_pyc_cache)
    with scratch_dir("ckms-bench-status-", args.keep, "tree") as base:
        return run(args, base, kernels, env)


def run(args: argparse.Namespace, base: Path, kernels: List[str], env: Dict[str, str]) -> int:
    npkgs, runs = args.packages, args.runs
    state = base / "state"
    ncmds = npkgs * (1 + 2 * len(kernels))
    header(f"setup: {npkgs} packages x {len(kernels)} kernels ({', '.join(kernels)})")
    secs = make_tree(base, npkgs, kernels, args.setup_cli, env)
    how = "one process per command" if args.setup_cli else "in-process ckms.cli.main"
    print(f"{ncmds} ckms commands (add, build, install -d) in {secs:.1f} s ({how})")

    # What `status` must show: every package on every kernel the tree knows,
    # plus every kernel with headers under /lib/modules (shown as 'added').
    system = [k for k in real_kernels() if k not in kernels]
    want_installed = npkgs * len(kernels)
    want_lines = npkgs * (len(kernels) + len(system))

    header(f"wall time over {runs} runs (each a new process, after one warm-up)")
    py = args.python
    print(f"interpreter: {py}; {describe_bytecode(env)}")
    plain = [py, "-m", "ckms", "-s", str(state), "status"]  # as a user types it
    one = package_name(0)
    commands: Dict[str, List[str]] = {
        "python3 -c pass": [py, "-c", "pass"],
        'python3 -c "import ckms.cli"': [py, "-c", "import ckms.cli"],
        "ckms status": plain,
        "ckms status --json": [*plain, "--json"],
        f"ckms status {one}": [*plain, one],
    }
    timed = time_interleaved(commands, runs, env)
    results = {label: summary(times) for label, (times, _out) in timed.items()}
    outputs = {label: out for label, (_times, out) in timed.items()}
    for label, stats in results.items():
        print(f"{label:<32} {fmt_ms(stats)}")
    scan = summary(inprocess_status(state, runs))
    print(f"{'Tree.status() in-process':<32} {fmt_ms(scan)}")

    header("where a status process's time goes: python3 -X importtime, one run")
    print(import_profile([*plain, "-L"], env))

    header("output")
    ok = True
    states = Counter(line.rsplit(": ", 1)[-1] for line in outputs["ckms status"].splitlines())
    counts = [("ckms status", len(outputs["ckms status"].splitlines()), want_lines),
              ("ckms status --json", len(json.loads(outputs["ckms status --json"])), want_lines),
              (f"ckms status {one}", len(outputs[f"ckms status {one}"].splitlines()),
               len(kernels) + len(system))]
    for label, n, want in counts:
        ok &= n == want
        print(f"{label:<32} {n} {'records' if 'json' in label else 'lines'} (expected {want})")
    print(f"states in 'ckms status': {dict(sorted(states.items()))}")
    if states.get("installed", 0) != want_installed:
        ok = False
    print(f"installed lines: {states.get('installed', 0)} (expected {npkgs} x {len(kernels)} = "
          f"{want_installed})")
    if system:
        print(f"note: status also lists the {len(system)} kernel(s) with headers under /lib/modules "
              f"({', '.join(system)}), every package 'added' there: {npkgs} x {len(system)} more lines")

    header("result")
    median = results["ckms status"]["median"]
    start_ms = results["python3 -c pass"]["median"]
    import_ms = results['python3 -c "import ckms.cli"']["median"] - start_ms
    verdict = "under" if median < TARGET_MS else "OVER"
    print(f"ckms status median {median:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target "
          f"(medians: python3 start-up {start_ms:.1f} ms, importing ckms {import_ms:.1f} ms, "
          f"tree scan {scan['median']:.1f} ms)")
    print(f"at the end: {load_note()}")
    if not ok:
        print("error: the tree or the status output is not what was expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
