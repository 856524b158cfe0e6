#!/usr/bin/env python3
"""What `ckms build` costs on top of the bare kbuild `make`, on a real kernel.

Each round times, in alternating order:

* ckms: ``python3 -m ckms -s <fresh state> -q -j N -k K build ckms-hello=1.0``
  (examples/hello, added to the fresh state dir just before; the add is timed
  on its own);
* make: ``make -j N -C /lib/modules/K/build M=<fresh copy of examples/hello> modules``.

and prints the median wall times and the overhead (ckms median - make median)
against the 0.2 s target.  Then it takes one build apart in-process: how long
the interpreter and the imports take, how long each step of the build takes
(the build hook, i.e. the same make, the strip, the rest), and a cProfile of
that build.

    python3 bench/build_overhead.py [-k KVER] [-n ROUNDS] [-j JOBS]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (after the sys.path line)
    EXAMPLES,
    check,
    child_env,
    ckms_argv,
    ckms_inprocess,
    describe_bytecode,
    header,
    load_note,
    real_kernels,
    scratch_dir,
    time_interleaved,
    timed_run,
)

TARGET_S = 0.2
SAMPLE = EXAMPLES / "hello"
REF = "ckms-hello=1.0"
MODULE = "ckms_hello.ko"


def newest(kernels: List[str]) -> str:
    from ckms.tree import version_key

    return max(kernels, key=version_key)


def secs(values: List[float]) -> str:
    return (f"median {statistics.median(values):6.3f} s  min {min(values):6.3f}  "
            f"max {max(values):6.3f}  (n={len(values)})")


class Round:
    """One fresh state dir / fresh source copy under a scratch directory."""

    def __init__(self, scratch: Path, kver: str, jobs: int, env: Dict[str, str]) -> None:
        self.scratch, self.kver, self.jobs, self.env = scratch, kver, jobs, env
        self.count = 0

    def fresh(self, what: str) -> Path:
        self.count += 1
        path = self.scratch / f"{what}-{self.count}"
        path.mkdir()
        return path

    def ckms(self) -> Tuple[float, float]:
        """(add seconds, build seconds) as processes, in a fresh state dir."""
        state = self.fresh("state")
        common = ["-s", str(state), "-q", "-L", "-j", str(self.jobs), "-k", self.kver]
        add_s, proc = timed_run(ckms_argv(*common, "add", str(SAMPLE)), self.env)
        check(proc, "ckms add")
        build_s, proc = timed_run(ckms_argv(*common, "build", REF), self.env)
        check(proc, "ckms build")
        moddir = state / "ckms-hello" / "1.0" / self.kver / os.uname().machine / "module"
        if not list(moddir.glob(MODULE + "*")):  # kept compressed as the kernel stores modules
            sys.exit(f"ckms build reported success but {moddir / MODULE} is missing")
        return add_s, build_s

    def make(self) -> float:
        copy = self.fresh("make") / "hello"
        shutil.copytree(SAMPLE, copy)
        argv = ["make", f"-j{self.jobs}", "-C", f"/lib/modules/{self.kver}/build", f"M={copy}",
                "modules"]
        make_s, proc = timed_run(argv, self.env)
        check(proc, " ".join(argv))
        if not (copy / MODULE).is_file():
            sys.exit(f"make produced no {copy / MODULE}")
        return make_s


def build_steps(scratch: Path, kver: str, jobs: int) -> Tuple[float, List[Tuple[str, float]]]:
    """One in-process build; (its wall seconds, [(step, seconds)]) for the commands it runs.

    ckms.build's run_logged (hooks, strip, sign) and run_quiet (shell booleans,
    `make --version`) are wrapped with a timer here; src/ckms is not changed.
    """
    import ckms.build as cb

    steps: List[Tuple[str, float]] = []

    def timing(fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def wrapper(cmd: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(cmd, *args, **kwargs)
            finally:
                text = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
                what = kwargs["log"].stem if "log" in kwargs else kind
                steps.append((f"{what}: {text[:70]}", time.perf_counter() - start))
        return wrapper

    state = scratch / "inproc-state"
    state.mkdir()
    common = ["-s", str(state), "-q", "-L", "-j", str(jobs), "-k", kver]
    if ckms_inprocess([*common, "add", str(SAMPLE)]) != 0:
        sys.exit("in-process ckms add failed")
    names = vars(cb)  # the module's namespace: where build() looks the helpers up
    saved = {name: names[name] for name in ("run_logged", "run_quiet")}
    for name, fn in saved.items():
        names[name] = timing(fn, name)
    try:
        start = time.perf_counter()
        rc = ckms_inprocess([*common, "build", REF])
        total = time.perf_counter() - start
    finally:
        names.update(saved)
    if rc != 0:
        sys.exit("in-process ckms build failed")
    return total, steps


def profile_build(scratch: Path, kver: str, jobs: int, top: int) -> str:
    """cProfile of one in-process build (add done beforehand, not profiled)."""
    state = scratch / "profile-state"
    state.mkdir()
    common = ["-s", str(state), "-q", "-L", "-j", str(jobs), "-k", kver]
    if ckms_inprocess([*common, "add", str(SAMPLE)]) != 0:
        sys.exit("in-process ckms add failed")
    prof = cProfile.Profile()
    prof.enable()
    rc = ckms_inprocess([*common, "build", REF])
    prof.disable()
    if rc != 0:
        sys.exit("profiled ckms build failed")
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    text.write("-- by own time (tottime):\n")
    stats.sort_stats("tottime").print_stats(top // 2)
    lines = [ln for ln in text.getvalue().splitlines()
             if ln.strip() and not ln.startswith(("Ordered by", "   List reduced"))]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    kernels = real_kernels()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--kernver", help=f"kernel with headers (default: the newest of "
                                            f"{', '.join(kernels) or 'none found'})")
    ap.add_argument("-n", "--rounds", type=int, default=5, help="timed builds of each kind (default 5)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                    help="make -j for both (default: CPUs)")
    ap.add_argument("--top", type=int, default=20, help="profile entries to print (default 20)")
    ap.add_argument("--no-pyc-cache", action="store_true",
                    help="keep the environment's PYTHONDONTWRITEBYTECODE (default: cache .pyc files)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    if not kernels and not args.kernver:
        print("no kernel headers under /lib/modules/*/build: nothing to measure "
              "(install linux-headers-$(uname -r))")
        return 0
    kver = args.kernver or newest(kernels)
    if not Path(f"/lib/modules/{kver}/build/Makefile").is_file():
        sys.exit(f"no headers for {kver} in /lib/modules/{kver}/build")

    with scratch_dir("ckms-bench-build-", args.keep) as scratch:
        return run(args, kver, scratch)


def run(args: argparse.Namespace, kver: str, scratch: Path) -> int:
    env = child_env(bytecode_cache=not args.no_pyc_cache)
    rounds = Round(scratch, kver, args.jobs, env)
    header(f"kernel {kver}, examples/hello, -j{args.jobs}, {args.rounds} rounds "
           "(order alternates; one warm-up round first, not counted)")
    print(describe_bytecode(env))
    print(load_note())
    rounds.make()
    rounds.ckms()
    adds: List[float] = []
    builds: List[float] = []
    makes: List[float] = []
    for i in range(args.rounds):
        if i % 2 == 0:
            add_s, build_s = rounds.ckms()
            make_s = rounds.make()
        else:
            make_s = rounds.make()
            add_s, build_s = rounds.ckms()
        adds.append(add_s)
        builds.append(build_s)
        makes.append(make_s)
        print(f"round {i + 1}: ckms build {build_s:6.3f} s   make {make_s:6.3f} s   "
              f"(ckms add {add_s:5.3f} s)")

    med_build, med_make = statistics.median(builds), statistics.median(makes)
    overhead = med_build - med_make
    header("wall times")
    print(f"{'ckms build':<26} {secs(builds)}")
    print(f"{'make modules (bare kbuild)':<26} {secs(makes)}")
    print(f"{'ckms add (separate)':<26} {secs(adds)}")
    pairs = sorted(b - m for b, m in zip(builds, makes))
    print(f"per-round differences (ckms - make): {', '.join(f'{d:+.3f}' for d in pairs)} s; "
          f"median {statistics.median(pairs):+.3f} s, min - min {min(builds) - min(makes):+.3f} s")
    verdict = "under" if overhead < TARGET_S else "OVER"
    print(f"\noverhead of ckms build: {overhead:+.3f} s (median - median): {verdict} the "
          f"{TARGET_S} s target")

    header("where ckms's time goes")
    label = 'python3 -c "import ckms.cli"'
    timed = time_interleaved({"python3 -c pass": [sys.executable, "-c", "pass"],
                              label: [sys.executable, "-c", "import ckms.cli"]}, 15, env)
    py, imp = timed["python3 -c pass"][0], timed[label][0]
    print(f"{'python3 -c pass':<34} median {statistics.median(py):6.3f} s")
    print(f"{label:<34} median {statistics.median(imp):6.3f} s")
    total, steps = build_steps(scratch, kver, args.jobs)
    print(f"{'one build in-process (no start-up)':<34} {total:6.3f} s, of which:")
    for what, step_s in steps:
        print(f"    {step_s:6.3f} s  {what}")
    in_tools = sum(s for _w, s in steps)
    print(f"    {total - in_tools:6.3f} s  ckms's own Python (copy source, checks, collect, publish)")
    hook = sum(s for w, s in steps if w.startswith("build:"))
    print(f"the build hook (kbuild make under ckms) took {hook:.3f} s against the bare make's "
          f"median {med_make:.3f} s ({hook - med_make:+.3f} s)")
    start_s, import_s = statistics.median(py), statistics.median(imp) - statistics.median(py)
    tools_s = in_tools - hook
    own_s = total - in_tools
    explained = start_s + import_s + tools_s + own_s
    print("\nckms's cost beyond the make it runs, largest first:")
    for cost, what in sorted([(start_s, "python3 start-up"), (import_s, "importing ckms"),
                              (tools_s, "strip/sign and other tools"),
                              (own_s, "ckms's own Python in build()")], reverse=True):
        print(f"    {cost:6.3f} s  {what}")
    print(f"    {explained:6.3f} s  in all, against the measured overhead {overhead:+.3f} s")
    spread = max(makes) - min(makes)
    if overhead >= TARGET_S:
        print(f"over target: {overhead - explained:+.3f} s of the overhead is not start-up, "
              f"imports or ckms's own work but the make itself: the bare make spans {spread:.3f} s "
              f"over these rounds, the one under ckms took {hook - med_make:+.3f} s against its "
              "median; run again on a quiet machine or with more rounds (-n)")

    header(f"cProfile of one in-process build (top {args.top} by cumulative time)")
    print(profile_build(scratch, kver, args.jobs, args.top))
    print(f"\nat the end: {load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
