"""Kernel lifecycle: every automatic package on every kernel, and kernel removal.

``autoinstall`` works in two phases, so that a kernel gets one depmod however
many packages it receives:

1. plan and build — as the state tree's owner: choose the newest version of
   each package marked for automatic install, decide per kernel what is
   skipped, up to date, to build or to (re)install, then run the builds in
   parallel under one job budget (``jobs.JobServer``), ``BUILD_DEPENDS`` first;
2. install — as the caller (root for the real module dir): one transaction
   for every kernel, so depmod and the initramfs hook run once per kernel.

One failing package does not stop the others; the summary says what happened
to each package on each kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .build import build, check_gates, fingerprint, outdated
from .context import Context
from .errors import BuildFailed, CkmsError, KernelError, Skipped
from .formats import LoadOptions, load_definition
from .install import Transaction
from .jobs import JobServer
from .kernel import Kernel, headers_hint
from .model import Package, version_key
from .privileges import drop_to_owner, is_root, owner_ids
from .ui import Output

LoadFor = Callable[[str, str, Kernel], Package]

# what a row's result can be, besides what done_text says; "would ..." in a dry run
UP_TO_DATE, SKIPPED, FAILED = "up to date", "skipped", "failed"


@dataclass
class Row:
    name: str
    version: str
    kernel: str
    result: str
    detail: str = ""
    log: Optional[str] = None


@dataclass
class Summary:
    rows: List[Row] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.result == FAILED for r in self.rows)

    def table(self) -> str:
        head = ("PACKAGE", "VERSION", "KERNEL", "RESULT")
        body = [(r.name, r.version, r.kernel, r.result + (f": {r.detail}" if r.detail else ""))
                for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(3)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:3], widths)) + "  " + line[3]
                         for line in [head, *body])


@dataclass
class Job:
    """One package on one kernel that needs work."""

    pkg: Package
    kernel: Kernel
    row: Row
    build: bool  # False: the existing build is up to date, only install
    replace: Optional[str]  # the installed version to uninstall first (may be pkg.version)
    deps: Set[str] = field(default_factory=set)


def loader(ctx: Context, opts: LoadOptions) -> LoadFor:
    """Load NAME=VERSION for a kernel; ckms.ini packages are read once."""
    cache: Dict[Tuple[str, str], Package] = {}

    def load(name: str, version: str, kernel: Kernel) -> Package:
        if (name, version) in cache:
            return cache[(name, version)]
        path = ctx.tree.definition(name, version)
        if not path.is_file():
            raise CkmsError(f"{name}={version} has no definition ({path})")
        pkg = load_definition(path, ctx.out.warn, dataclasses.replace(opts, kernel=kernel))
        if (pkg.name, pkg.version) != (name, version):
            raise CkmsError(f"{path} defines {pkg.ref}, not {name}={version}")
        if pkg.fmt == "ckms.ini":
            cache[(name, version)] = pkg
        return pkg
    return load


def newest_versions(ctx: Context) -> Dict[str, str]:
    """The newest added version of every package in the tree."""
    out: Dict[str, str] = {}
    try:
        names = sorted(e.name for e in os.scandir(ctx.tree.root)
                       if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except OSError:
        return out
    for name in names:
        added = [v for v in ctx.tree.versions(name) if ctx.tree.is_added(name, v)]
        if added:
            out[name] = max(added, key=version_key)
    return out


# ----- phase 1: plan -------------------------------------------------------------
def plan(ctx: Context, kernels: List[Kernel], load: LoadFor, force: bool) -> Tuple[List[Job], Summary]:
    """What autoinstall has to do; rows for what needs nothing."""
    summary = Summary()
    jobs: List[Job] = []
    newest = newest_versions(ctx)
    for kernel in kernels:
        kver = kernel.version
        try:
            kernel.require_headers()
        except KernelError:
            summary.rows.append(Row("*", "", kver, SKIPPED,
                                    f"no kernel headers yet ({headers_hint(kver)})"))
            continue
        kjobs: Dict[str, Job] = {}
        for name, version in newest.items():
            row = Row(name, version, kver, "")
            try:
                pkg = load(name, version, kernel)
                if not pkg.autoinstall:
                    continue
                check_gates(ctx, pkg, kernel)
                built = ctx.tree.builtdir(name, version, kver, kernel.machine)
                need_build = (force or not built.is_dir()
                              or bool(outdated(built, fingerprint(ctx, pkg, kernel))))
            except Skipped as exc:
                row.result, row.detail = SKIPPED, str(exc)
                summary.rows.append(row)
                continue
            except CkmsError as exc:
                row.result, row.detail = FAILED, str(exc)
                summary.rows.append(row)
                continue
            installed = ctx.tree.installed_version(name, kver, kernel.machine)
            if not need_build and installed == version:
                row.result = UP_TO_DATE
                summary.rows.append(row)
                continue
            summary.rows.append(row)
            kjobs[name] = Job(pkg, kernel, row, need_build,
                              installed if (installed and (installed != version or need_build)) else None,
                              {d for d in pkg.build_depends if d != name})
        for job in kjobs.values():
            missing = [d for d in sorted(job.deps) if d not in kjobs]
            job.deps -= set(missing)  # satisfied already (installed, up to date) or not ours
        jobs.extend(_dependency_order(list(kjobs.values()), summary))
    return jobs, summary


def _dependency_order(jobs: List[Job], summary: Summary) -> List[Job]:
    """Jobs with their BUILD_DEPENDS first; a dependency cycle fails its members."""
    ordered: List[Job] = []
    done: Set[str] = set()
    pending = sorted(jobs, key=lambda j: j.pkg.name)
    while pending:
        ready = [j for j in pending if j.deps <= done]
        if not ready:
            for job in pending:
                job.row.result, job.row.detail = FAILED, (
                    "BUILD_DEPENDS cycle between " + ", ".join(j.pkg.name for j in pending))
            break
        for job in ready:
            ordered.append(job)
            done.add(job.pkg.name)
            pending.remove(job)
    return ordered


def describe(job: Job) -> str:
    if job.build and job.replace == job.pkg.version:
        return "rebuild and reinstall"
    what = "build and install" if job.build else "install"
    return f"{what} (replacing {job.replace})" if job.replace else what


def done_text(job: Job) -> str:
    text = {"build and install": "built and installed", "install": "installed",
            "rebuild and reinstall": "rebuilt and reinstalled"}
    what = describe(job)
    base, _, rest = what.partition(" (")
    return text[base] + (f" ({rest}" if rest else "").replace("replacing", "replaced")


# ----- phase 1: build ------------------------------------------------------------
class Progress:
    """A live line per running build on a terminal; plain lines otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.running: Dict[str, Tuple[str, float]] = {}  # label -> (phase, start)
        self.lock = threading.Lock()
        self.drawn = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> Progress:
        if self.live:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self.lock:
            self._clear()

    def phase(self, label: str, phase: str) -> None:
        with self.lock:
            start = self.running.get(label, ("", time.monotonic()))[1]
            self.running[label] = (phase, start)
            if not self.live and phase == "start":
                self.stream.write(f"=> {label}: building\n")
                self.stream.flush()

    def done(self, label: str, message: str) -> None:
        with self.lock:
            _, start = self.running.pop(label, ("", time.monotonic()))
            self._clear()
            self.stream.write(f"=> {label}: {message} ({time.monotonic() - start:.0f}s)\n")
            self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self.lock:
                self._clear()
                self._draw()

    def _clear(self) -> None:
        if self.live and self.drawn:
            self.stream.write("\033[1A\033[2K" * self.drawn)
        self.drawn = 0

    def _draw(self) -> None:
        if self.live:
            now = time.monotonic()
            for label, (phase, start) in self.running.items():
                self.stream.write(f"   {label}: {phase} [{now - start:3.0f}s]\n")
            self.drawn = len(self.running)
        self.stream.flush()


def run_builds(ctx: Context, jobs: List[Job], stream: IO[str]) -> None:
    """Build what needs building, in parallel, dependencies first; fill in the rows."""
    to_build = [j for j in jobs if j.build and not j.row.result]
    if not to_build:
        return
    slots = max(1, ctx.config.jobs)
    # hooks that pass -j${CKMS_JOBS} themselves get their share of the budget
    share = max(1, slots // min(slots, len(to_build)))
    quiet = Output(quiet=True, color=False, stream=io.StringIO(), errstream=sys.stderr)
    bctx = dataclasses.replace(ctx, out=quiet,
                               config=ctx.config.with_options(jobs=share, quiet=True))
    failed: Set[Tuple[str, str]] = set()  # (name, kver)
    finished: Set[Tuple[str, str]] = set()
    waiting = list(to_build)
    running: Dict[Future[None], Job] = {}
    with JobServer(slots) as server, Progress(stream) as progress, \
            ThreadPoolExecutor(max_workers=slots) as pool:

        def start(job: Job) -> Future[None]:
            label = f"{job.pkg.ref} {job.kernel.version}"

            def work() -> None:
                with server.slot():
                    progress.phase(label, "start")
                    build(bctx, job.pkg, job.kernel, force=True, jobserver=server,
                          progress=lambda phase: progress.phase(label, phase))
            return pool.submit(work)

        while waiting or running:
            for job in list(waiting):
                kv = job.kernel.version
                bad = [d for d in job.deps if (d, kv) in failed]
                if bad:
                    job.row.result, job.row.detail = FAILED, f"dependency {bad[0]} failed"
                    failed.add((job.pkg.name, kv))
                    waiting.remove(job)
                elif all((d, kv) in finished for d in job.deps if _builds(d, kv, to_build)):
                    running[start(job)] = job
                    waiting.remove(job)
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                label = f"{job.pkg.ref} {job.kernel.version}"
                key = (job.pkg.name, job.kernel.version)
                exc = fut.exception()
                if exc is None:
                    finished.add(key)
                    progress.done(label, "built")
                    continue
                failed.add(key)
                job.row.result = FAILED
                if isinstance(exc, BuildFailed):
                    job.row.detail, job.row.log = "build failed", exc.logdir
                elif isinstance(exc, CkmsError):
                    job.row.detail = str(exc).splitlines()[0]
                else:
                    job.row.detail = f"internal error: {exc!r}"
                progress.done(label, "FAILED")
                ctx.out.error(str(exc))


def _builds(name: str, kver: str, to_build: List[Job]) -> bool:
    return any(j.pkg.name == name and j.kernel.version == kver for j in to_build)


# ----- phase 2: install ------------------------------------------------------------
def install_all(ctx: Context, jobs: List[Job], load: LoadFor) -> None:
    """Install what was built (or was up to date but not installed); depmod once per kernel."""
    txn = Transaction(ctx)
    try:
        for job in jobs:
            if job.row.result:
                continue  # failed or skipped
            by_kernel = _for_kernel(load, job.kernel)
            try:
                if job.replace is not None:
                    txn.uninstall(job.pkg.name, job.kernel, by_kernel, job.replace)
                txn.install(job.pkg, job.kernel, by_kernel)
            except CkmsError as exc:
                job.row.result, job.row.detail = FAILED, str(exc).splitlines()[0]
                ctx.out.error(str(exc))
                continue
            job.row.result = done_text(job)
    finally:
        try:
            txn.finish()
        except CkmsError as exc:
            ctx.out.error(str(exc))
            for job in jobs:
                if job.row.result == done_text(job) and job.kernel.version in txn.rolled_back:
                    job.row.result, job.row.detail = FAILED, "depmod failed; rolled back"


# ----- the command ----------------------------------------------------------------------
def autoinstall(ctx: Context, kernels: List[Kernel], opts: LoadOptions, force: bool = False,
                dry_run: bool = False, stream: IO[str] = sys.stdout) -> Summary:
    """Build and install every automatic package for kernels (the caller holds the lock)."""
    load = loader(ctx, opts)
    if dry_run:
        jobs, summary = plan(ctx, kernels, load, force)
        for job in jobs:
            if not job.row.result:
                job.row.result = "would " + describe(job)
        return summary
    recover_all(ctx, load)
    jobs, summary = in_owner_process(ctx, lambda: _plan_and_build(ctx, kernels, load, force, stream))
    install_all(ctx, jobs, load)
    return summary


def _plan_and_build(ctx: Context, kernels: List[Kernel], load: LoadFor, force: bool,
                    stream: IO[str]) -> Tuple[List[Job], Summary]:
    jobs, summary = plan(ctx, kernels, load, force)
    run_builds(ctx, jobs, stream)
    return jobs, summary


def in_owner_process(ctx: Context, work: Callable[[], Tuple[List[Job], Summary]]
                     ) -> Tuple[List[Job], Summary]:
    """Run work as the state tree's owner: in a forked child when we are root.

    The child drops its privileges for good; the parent (still root, for the
    install phase) gets back the plan and the rows.
    """
    if not is_root() or owner_ids(ctx.tree.root)[0] == 0:
        return work()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: build as the owner, send the result, exit
        code = 0
        try:
            os.close(rfd)
            drop_to_owner(ctx.tree.root)
            result = work()
            with os.fdopen(wfd, "wb") as fh:
                pickle.dump(result, fh)
        except BaseException as exc:  # noqa: BLE001 - reported here, the parent fails
            with contextlib.suppress(Exception):
                ctx.out.error(str(exc) if isinstance(exc, CkmsError) else repr(exc))
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        raw = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not raw:
        raise CkmsError("the build phase failed; see the messages above")
    jobs, summary = pickle.loads(raw)  # from our own child, which we trust as ourselves
    return jobs, summary


def recover_all(ctx: Context, load: LoadFor) -> None:
    """Finish or undo every install/uninstall a killed process left behind."""
    for journal in sorted(ctx.tree.root.glob("*/.txn-*.json")):
        name = journal.parent.name
        kver, _, arch = journal.name[len(".txn-"):-len(".json")].rpartition("-")
        kernel = Kernel.find(kver, machine=arch)
        txn = Transaction(ctx)
        try:
            txn.recover(name, kernel, _for_kernel(load, kernel))
        finally:
            txn.finish()


def _for_kernel(load: LoadFor, kernel: Kernel) -> Callable[[str, str], Package]:
    def load_one(name: str, version: str) -> Package:
        return load(name, version, kernel)
    return load_one


# ----- kernel removal ------------------------------------------------------------------
def kernel_removed(ctx: Context, kver: str, arch: str, load: LoadFor,
                   dry_run: bool = False) -> List[str]:
    """Drop every install and build for a kernel being removed; packages stay added.

    No depmod: the kernel's module directory is on its way out.  Returns what
    was (or, in a dry run, would be) done, one line each.
    """
    kernel = Kernel.find(kver, machine=arch)
    done: List[str] = []
    names = sorted(newest_versions(ctx)) + sorted(
        p.parent.name for p in ctx.tree.root.glob(f"*/kernel-{kver}-{arch}"))
    txn = Transaction(dataclasses.replace(ctx, depmod=False))
    for name in sorted(set(names)):
        current = ctx.tree.installed_version(name, kver, arch)
        if current is not None and not txn.kernel_dir(kernel).is_dir():
            # the module dir is gone already: forget the install, touch nothing there
            done.append(f"forget the install of {name}={current} on {kver} (module dir gone)")
            if not dry_run:
                ctx.tree.installed_link(name, kver, arch).unlink()
                shutil.rmtree(ctx.tree.originals(name, kver, arch), ignore_errors=True)
                ctx.tree.journal(name, kver, arch).unlink(missing_ok=True)
                ctx.tree.prune_package_dir(name)
        elif current is not None:
            done.append(f"uninstall {name}={current} from {kver}")
            if not dry_run:
                txn.uninstall(name, kernel, _for_kernel(load, kernel), current)
        for version in ctx.tree.versions(name):
            built = ctx.tree.builtdir(name, version, kver, arch)
            failed = ctx.tree.faileddir(name, version, kver, arch)
            if built.exists() or failed.exists():
                done.append(f"clean {name}={version} for {kver}")
                if not dry_run:
                    ctx.tree.clean(name, version, kver, arch)
    return done


def gone_kernels(ctx: Context) -> Iterator[Tuple[str, str]]:
    """(kver, arch) with state in the tree but no module directory any more."""
    seen: Set[Tuple[str, str]] = set()
    for line in ctx.tree.status():
        if line.state != "added" and line.arch and (line.kernel, line.arch) not in seen:
            seen.add((line.kernel, line.arch))
            if not (ctx.tree.modules_root / line.kernel).is_dir():
                yield line.kernel, line.arch


def kernels_with_headers(modules_root: Path) -> List[Kernel]:
    """Every kernel under modules_root that has headers, oldest first."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(modules_root):
            if (Path(entry.path) / "build" / "Makefile").is_file():
                found.append(entry.name)
    return [Kernel.find(k, modules_root=modules_root) for k in sorted(found, key=version_key)]
