"""Helpers shared by the benchmark scripts: paths, timing, statistics.

The scripts run from a source checkout with no install: child processes get
``PYTHONPATH=<repo>/src`` and this module puts ``src`` on ``sys.path`` for the
in-process calls.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EXAMPLES = ROOT / "examples"
PYCACHE = os.path.join(tempfile.gettempdir(), f"ckms-bench-pycache-{os.getuid()}")

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def child_env(bytecode_cache: bool = True) -> Dict[str, str]:
    """The environment for `python3 -m ckms` children: ckms from this checkout.

    With ``bytecode_cache`` the children may write and reuse .pyc files, kept
    out of the checkout in a cache under the temp dir (PYTHONPYCACHEPREFIX), as
    an installed ckms has them; an inherited PYTHONDONTWRITEBYTECODE would
    otherwise make every run compile ckms's sources again.  Without it the
    environment's own setting is kept.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NO_COLOR", None)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


def describe_bytecode(env: Dict[str, str]) -> str:
    if env.get("PYTHONPYCACHEPREFIX") == PYCACHE:
        return f".pyc files cached in {PYCACHE} (as an installed ckms has them)"
    if env.get("PYTHONDONTWRITEBYTECODE"):
        return "no .pyc for src/ckms (PYTHONDONTWRITEBYTECODE is set): every run compiles ckms"
    return ".pyc files as the environment has them"


def ckms_argv(*args: str) -> List[str]:
    """argv running ckms as a user would (`python3 -m ckms`), no global config."""
    return [sys.executable, "-m", "ckms", "-C", "/dev/null", *args]


def real_kernels() -> List[str]:
    """Kernel versions with headers installed, oldest first (as tests/conftest.py finds them)."""
    base = Path("/lib/modules")
    if not base.is_dir():
        return []
    return sorted(k.name for k in base.iterdir() if (k / "build" / "Makefile").is_file())


def timed_run(argv: Sequence[str], env: Dict[str, str],
              cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run argv to completion; return (wall seconds, the finished process)."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return time.perf_counter() - start, proc


def check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Stop the benchmark with the command's output if it failed."""
    if proc.returncode != 0:
        sys.exit(f"{what} failed (exit status {proc.returncode}):\n"
                 f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def summary(values: Sequence[float]) -> Dict[str, float]:
    """min / median / p90 / max of a list of seconds, in milliseconds."""
    return {"min": min(values) * 1000, "median": statistics.median(values) * 1000,
            "p90": percentile(values, 90) * 1000, "max": max(values) * 1000}


def fmt_ms(stats: Dict[str, float]) -> str:
    return (f"min {stats['min']:7.1f}  median {stats['median']:7.1f}  "
            f"p90 {stats['p90']:7.1f}  max {stats['max']:7.1f} ms")


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Send fd 1 and 2 to /dev/null (ckms's Output holds the real sys.stdout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def ckms_inprocess(args: Sequence[str]) -> int:
    """Run one ckms command in this process (no interpreter start-up), output discarded."""
    from ckms.cli import main

    with silenced():
        return main(["-C", "/dev/null", *args])


def time_interleaved(commands: Mapping[str, Sequence[str]], runs: int,
                     env: Dict[str, str]) -> Dict[str, tuple[List[float], str]]:
    """Time each command `runs` times, round-robin, after one warm-up run of each.

    Interleaving spreads any burst of load on the machine over all the
    commands instead of one.  Returns, per label, the wall seconds of each run
    and the output of the last.
    """
    times: Dict[str, List[float]] = {label: [] for label in commands}
    last: Dict[str, str] = {}
    for argv in commands.values():  # warm-up: page cache, .pyc files
        _, proc = timed_run(argv, env)
        check(proc, " ".join(argv))
    for _ in range(runs):
        for label, argv in commands.items():
            secs, proc = timed_run(argv, env)
            check(proc, " ".join(argv))
            times[label].append(secs)
            last[label] = proc.stdout
    return {label: (times[label], last[label]) for label in commands}


def load_note() -> str:
    """The machine's load, to judge how noisy the figures are."""
    one, five, fifteen = os.getloadavg()
    ncpu = os.cpu_count() or 1
    busy = "" if one < 0.5 else "  (other work is running: expect noisy figures)"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {ncpu} CPUs{busy}"


def header(title: str) -> None:
    print(f"\n== {title}")



@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool, what: str = "scratch",
                parent: Optional[str] = None) -> Iterator[Path]:
    """A scratch directory for one bench run; removed at the end unless keep (--keep)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield base
    finally:
        if keep:
            print(f"\n{what} kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
