"""Install and uninstall: a journaled transaction over one kernel's module dir.

Before a module file is touched, a journal (``<name>/.txn-<kver>-<arch>.json``)
records what will change.  Install commits by creating the ``kernel-<kver>-<arch>``
link; uninstall commits by writing its journal.  The next writer to take the
lock finishes the work of a killed process: an uncommitted install is rolled
back (new files removed, originals put back), an uninstall is rolled forward.
So a kernel is always either fully with or fully without a package.

depmod runs once per kernel at the end of the command (``Transaction.finish``);
if it fails, what the command installed on that kernel is rolled back.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Set, Tuple

from .build import evaluate, hook_env, module_suffix
from .context import Context
from .errors import CkmsError, PermissionProblem, StateError
from .kernel import Kernel
from .model import Package
from .privileges import chown_to_owner, is_root, owner_ids
from .run import recompressed, run_logged, run_quiet, tail

SUFFIXES = ("", ".gz", ".xz", ".zst")
LoadPackage = Callable[[str, str], Package]


class Transaction:
    """Installs and uninstalls of one command; depmod once per kernel at the end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.done: Dict[str, List[Tuple[str, Package, Kernel]]] = {}
        self.kernels: Dict[str, Kernel] = {}
        self.initramfs: Set[str] = set()
        self.rolled_back: Set[str] = set()  # kernels whose changes depmod made finish() undo

    # ----- checks -----------------------------------------------------------
    def require_rights(self) -> None:
        if self.ctx.real_destdir and not is_root():
            raise PermissionProblem(
                f"installing into {self.ctx.config.destdir} needs root: run as root, "
                "or install into a staging directory with -d DESTDIR")

    def kernel_dir(self, kernel: Kernel) -> Path:
        return self.ctx.config.destdir / kernel.version

    def suffix(self, kernel: Kernel) -> str:
        return module_suffix(self.ctx, kernel)

    # ----- install ----------------------------------------------------------
    def install(self, pkg: Package, kernel: Kernel, load: LoadPackage) -> bool:
        tree, out = self.ctx.tree, self.ctx.out
        kver, arch = kernel.version, kernel.machine
        self.recover(pkg.name, kernel, load)
        current = tree.installed_version(pkg.name, kver, arch)
        if current == pkg.version:
            out.info(f"{pkg.ref} is already installed for {kver}/{arch}")
            return False
        if current is not None:
            raise StateError(f"{pkg.name}={current} is installed for {kver}; "
                             f"'ckms -k {kver} uninstall {pkg.name}' first")
        built = tree.builtdir(pkg.name, pkg.version, kver, arch)
        if not built.is_dir():
            raise StateError(f"{pkg.ref} is not built for {kver}/{arch}; "
                             f"'ckms -k {kver} build {pkg.ref}' first")
        kdir = self.kernel_dir(kernel)
        sfx = self.suffix(kernel)
        originals = tree.originals(pkg.name, kver, arch)
        files: List[Tuple[str, str]] = []
        backups: List[Tuple[str, str]] = []
        for mod in pkg.modules:
            # built as the kernel stores modules (DKMS's layout); else recompressed here
            found = [p for p in _variants(built / "module" / mod.dest_name, ".ko") if p.is_file()]
            if not found:
                raise StateError(f"{built / 'module'} has no {mod.dest_name}.ko: the build of "
                                 f"{pkg.ref} is damaged; 'ckms -k {kver} build -f {pkg.ref}'")
            src = next((p for p in found if p.name.endswith(".ko" + sfx)), found[0])
            files.append((str(src), mod.dest_relpath + sfx))
            for old in _variants(kdir / mod.dest_relpath):
                rel = os.path.relpath(old, kdir)
                backups.append((rel, str(originals / rel)))
        self._hook(pkg, kernel, "pre_install", built)
        out.info(f"installing {pkg.ref} for {kver}/{arch} into {kdir}")
        self._write_journal(pkg.name, kernel, {
            "op": "install", "version": pkg.version,
            "files": [dst for _, dst in files], "backups": backups,
        })
        self.kernels[kver] = kernel
        for rel, backup in backups:
            _move(kdir / rel, Path(backup))
            out.info(f"kept the original {rel} (restored on uninstall)")
        if backups:
            for dirpath, dirs, names in os.walk(originals.parent.parent):
                for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirs + names)]:
                    self._give_to_owner(Path(entry))
        for srcfile, rel in files:
            self._place(Path(srcfile), kdir / rel, sfx)
        self._commit_install(pkg, kernel)
        self.done.setdefault(kver, []).append(("install", pkg, kernel))
        if self._initramfs_wanted(pkg, kernel, built):
            self.initramfs.add(kver)
        self._hook(pkg, kernel, "post_install", built, fatal=False)
        out.info(f"installed {pkg.ref} for {kver}/{arch}")
        return True

    def _commit_install(self, pkg: Package, kernel: Kernel) -> None:
        tree = self.ctx.tree
        link = tree.installed_link(pkg.name, kernel.version, kernel.machine)
        tmp = link.with_name(f".{link.name}.new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"{pkg.version}/{kernel.version}/{kernel.machine}", tmp)
        self._give_to_owner(tmp)
        os.rename(tmp, link)
        tree.journal(pkg.name, kernel.version, kernel.machine).unlink()

    def _place(self, src: Path, dst: Path, sfx: str) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmpname = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        tmp = Path(tmpname)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(recompressed(src, sfx))
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ----- uninstall ----------------------------------------------------------
    def uninstall(self, name: str, kernel: Kernel, load: LoadPackage,
                  version: Optional[str] = None) -> bool:
        tree, out = self.ctx.tree, self.ctx.out
        kver, arch = kernel.version, kernel.machine
        self.recover(name, kernel, load)
        current = tree.installed_version(name, kver, arch)
        if current is None or (version is not None and current != version):
            what = f"{name}={version}" if version else name
            raise StateError(f"{what} is not installed for {kver}/{arch}"
                             + (f" ({name}={current} is)" if current else ""))
        pkg = load(name, current)
        built = tree.builtdir(name, current, kver, arch)
        self._hook(pkg, kernel, "pre_remove", built)
        out.info(f"uninstalling {pkg.ref} from {kver}/{arch}")
        self._write_journal(name, kernel, {
            "op": "uninstall", "version": current,
            "files": [mod.dest_relpath for mod in pkg.modules],
        })
        self.kernels[kver] = kernel
        self._finish_uninstall(pkg, kernel)
        self.done.setdefault(kver, []).append(("uninstall", pkg, kernel))
        if self._initramfs_wanted(pkg, kernel, built):
            self.initramfs.add(kver)
        self._hook(pkg, kernel, "post_remove", built, fatal=False)
        out.info(f"uninstalled {pkg.ref} from {kver}/{arch}")
        return True

    def _finish_uninstall(self, pkg: Package, kernel: Kernel) -> None:
        """Idempotent: remove our files, put originals back, drop the link."""
        tree = self.ctx.tree
        kdir = self.kernel_dir(kernel)
        for mod in pkg.modules:
            for path in _variants(kdir / mod.dest_relpath):
                path.unlink()
        self._restore_originals(pkg, kernel)
        for mod in pkg.modules:
            _prune_dirs((kdir / mod.dest_relpath).parent, kdir)
        tree.installed_link(pkg.name, kernel.version, kernel.machine).unlink(missing_ok=True)
        tree.journal(pkg.name, kernel.version, kernel.machine).unlink(missing_ok=True)

    def _restore_originals(self, pkg: Package, kernel: Kernel) -> None:
        """Put back every archived original module (see _original_place); prune the emptied archive."""
        tree, out = self.ctx.tree, self.ctx.out
        base = tree.originals(pkg.name, kernel.version, kernel.machine)
        kdir = self.kernel_dir(kernel)
        if not base.is_dir():
            return
        for dirpath, _dirs, names in os.walk(base):
            for fname in names:
                backup = Path(dirpath) / fname
                rel = _original_place(os.path.relpath(backup, base), pkg)
                if rel is None:
                    out.warn(f"kept {backup}: {pkg.ref} has no module called {fname}, so where "
                             "it belongs is not known")
                    continue
                _move(backup, kdir / rel)
                out.info(f"restored the original {rel}")
        tree.prune_package_dir(pkg.name)  # the emptied archive dirs

    # ----- recovery ---------------------------------------------------------
    def recover(self, name: str, kernel: Kernel, load: LoadPackage) -> None:
        """Finish or undo the transaction a killed process left behind."""
        tree, out = self.ctx.tree, self.ctx.out
        journal = tree.journal(name, kernel.version, kernel.machine)
        try:
            record = json.loads(journal.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            journal.unlink(missing_ok=True)
            return
        version = record.get("version")
        self.kernels[kernel.version] = kernel
        if record.get("op") == "uninstall":
            out.warn(f"finishing the interrupted uninstall of {name}={version} from {kernel.version}")
            self._finish_uninstall(load(name, version), kernel)
            return
        if tree.installed_version(name, kernel.version, kernel.machine) == version:
            journal.unlink()
            return
        out.warn(f"rolling back the interrupted install of {name}={version} on {kernel.version}")
        kdir = self.kernel_dir(kernel)
        for rel in record.get("files", []):
            (kdir / rel).unlink(missing_ok=True)
        for rel, backup in record.get("backups", []):
            if Path(backup).exists():
                _move(Path(backup), kdir / rel)
        for rel in record.get("files", []):
            _prune_dirs((kdir / rel).parent, kdir)
        journal.unlink()

    def _write_journal(self, name: str, kernel: Kernel, record: dict[str, object]) -> None:
        path = self.ctx.tree.journal(name, kernel.version, kernel.machine)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self._give_to_owner(tmp)
        os.rename(tmp, path)

    # ----- the end of the command -------------------------------------------
    def finish(self) -> None:
        """Run depmod (and the initramfs hook) once for each kernel touched."""
        failures = []
        for kver, kernel in self.kernels.items():
            if not self.ctx.depmod or not self.ctx.real_destdir:
                continue
            if not (self.kernel_dir(kernel)).is_dir():
                continue
            ok, log = self._depmod(kernel)
            if not ok:
                failures.append(f"depmod failed for {kver}:\n{log}")
                self.rolled_back.add(kver)
                self._roll_back(kver)
                self._depmod(kernel)
                continue
            if kver in self.initramfs:
                self._initramfs(kernel)
        if failures:
            raise CkmsError("\n".join(failures) + "\nthe changes to these kernels were rolled back")

    def _roll_back(self, kver: str) -> None:
        for op, pkg, kernel in reversed(self.done.get(kver, [])):
            self.ctx.out.warn(f"rolling back the {op} of {pkg.ref} on {kver}")
            if op == "install":
                self._finish_uninstall(pkg, kernel)

    def _depmod(self, kernel: Kernel) -> Tuple[bool, str]:
        hook = self.ctx.config.depmod_hook
        if hook is not None:
            argv = [str(hook), kernel.version]
        else:
            argv = ["depmod", "-a"]
            smap = kernel.system_map()
            if smap is not None:
                argv += ["-F", str(smap)]
            argv.append(kernel.version)
        self.ctx.out.info(f"running {' '.join(argv)}")
        proc = run_quiet(argv)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()

    def _initramfs(self, kernel: Kernel) -> None:
        hook = self.ctx.config.initramfs_hook
        if hook is None or not hook.is_file():
            return
        self.ctx.out.info(f"refreshing the initramfs of {kernel.version} with {hook}")
        try:
            rc = subprocess.run([str(hook), kernel.version], cwd=self.ctx.config.destdir,
                                stdin=subprocess.DEVNULL).returncode
        except OSError as exc:
            rc, why = -1, exc.strerror
        else:
            why = f"exit status {rc}"
        if rc != 0:
            self.ctx.out.warn(f"{hook} failed for {kernel.version} ({why}); "
                              "refresh the initramfs by hand")

    # ----- helpers --------------------------------------------------------------
    def _initramfs_wanted(self, pkg: Package, kernel: Kernel, built: Path) -> bool:
        if isinstance(pkg.initramfs, bool):
            return pkg.initramfs
        return evaluate(pkg.initramfs, built, hook_env(self.ctx, pkg, kernel))

    def _hook(self, pkg: Package, kernel: Kernel, hook: str, built: Path,
              fatal: bool = True) -> None:
        """Run an install-time hook; a failing post_* hook (after the commit) only warns."""
        cmd = pkg.hooks.get(hook)
        if cmd is None:
            return
        self.ctx.out.info(f"running {hook}...")
        env = hook_env(self.ctx, pkg, kernel)
        logdir = Path(tempfile.mkdtemp(prefix=f".{hook}-", dir=self.ctx.tree.verdir(pkg.name, pkg.version)))
        log = logdir / f"{hook}.log"
        try:
            rc = _run_as_owner(cmd, built if built.is_dir() else logdir, env, log,
                               self.ctx.out.echo(), self.ctx.tree.root)
            kept = built / "log" / f"{hook}.log"
            if built.is_dir() and os.access(built / "log", os.W_OK):
                shutil.copyfile(log, kept)
            if rc != 0:
                msg = (f"{hook} hook of {pkg.ref} failed on {kernel.version} "
                       f"(exit status {rc}); log: {kept}\n{tail(log)}")
                if fatal:
                    raise CkmsError(msg)
                self.ctx.out.warn(msg)
        finally:
            shutil.rmtree(logdir, ignore_errors=True)

    def _give_to_owner(self, path: Path) -> None:
        chown_to_owner(path, self.ctx.tree.root)


def _run_as_owner(cmd: str, cwd: Path, env: Dict[str, str], log: Path,
                  echo: Optional[IO[str]], statedir: Path) -> int:
    """Run an install-time hook; as root, as the state tree's owner."""
    ids = None
    if is_root():
        uid, gid = owner_ids(statedir)
        if uid != 0:
            os.chown(log.parent, uid, gid)
            ids = (uid, gid)
    return run_logged(cmd, cwd=cwd, env=env, log=log, echo=echo, as_ids=ids)


def _original_place(rel: str, pkg: Package) -> Optional[str]:
    """Where an archived original goes back, relative to the kernel's module dir.

    ckms archives each original at its path under the kernel's module dir
    (``extra/foo.ko``).  DKMS archives them flat (``foo.ko``) and puts one
    back into its module's destination; it keeps same-named modules found
    elsewhere under ``collisions/<their dir>/``, which go back there.
    """
    head, _, rest = rel.partition("/")
    if head == "collisions" and rest:
        return rest
    if rest:
        return rel
    for mod in pkg.modules:
        if any(rel == f"{mod.dest_name}.ko{sfx}" for sfx in SUFFIXES):
            return posixpath.join(mod.dest, rel)
    return None


def _variants(base: Path, ext: str = "") -> List[Path]:
    """The module file at base+ext in any compression (foo.ko, foo.ko.xz...)."""
    return [Path(f"{base}{ext}{sfx}") for sfx in SUFFIXES if os.path.lexists(f"{base}{ext}{sfx}")]


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.ckms-tmp")
        shutil.copy2(src, tmp)
        os.rename(tmp, dst)
        src.unlink()


def _prune_dirs(path: Path, stop: Path) -> None:
    """Remove empty directories from path up to (not including) stop."""
    while path != stop and path.is_relative_to(stop):
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
