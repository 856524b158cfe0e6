"""DKMS's actions, each over the operations the ``ckms`` command uses.

Where DKMS loops over kernels (build, install, uninstall, unbuild, remove,
match), one kernel failing does not stop the others; the exit status is the
first failure's (DKMS returns the last kernel's).  Every writer holds the
tree's lock; installs and uninstalls of one command share one transaction,
so depmod runs once per kernel, at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..build import build
from ..cli import post_add
from ..config import Config
from ..context import Context
from ..errors import (
    BuildFailed,
    CkmsError,
    ConfigError,
    KernelError,
    ModuleMissing,
    PermissionProblem,
    Skipped,
)
from ..formats import LoadOptions, load_definition
from ..install import Transaction
from ..kernel import Kernel
from ..lifecycle import FAILED, SKIPPED, autoinstall, kernel_removed, loader, newest_versions
from ..model import Module, Package, version_key
from ..privileges import chown_to_owner, drop_to_owner, is_root, owner_ids
from ..sanity import check as check_version_sanity
from ..tree import Tree
from . import DkmsError, DkmsOutput, exit_code
from .args import Invocation
from .framework import Locations
from .status import MANIFEST, scan, write_manifest

# actions that may change the module dir: root when it is the real one
MODULE_DIR_ACTIONS = ("install", "uninstall", "unbuild", "remove", "match", "autoinstall",
                      "kernel_preinst", "kernel_postinst", "kernel_prerm")
ONE_KERNEL_ACTIONS = ("match", "autoinstall", "kernel_preinst", "kernel_postinst", "kernel_prerm")


class Session:
    """One ckms-dkms command: its options, the state tree and the kernels."""

    def __init__(self, inv: Invocation, where: Locations, out: DkmsOutput) -> None:
        self.inv, self.where, self.out = inv, where, out
        signing = where.mok_cert.is_file() and (where.mok_key.is_file()
                                                or str(where.mok_key).startswith("pkcs11:"))
        jobs = inv.jobs if inv.jobs is not None else where.jobs
        cfg = Config(statedir=where.dkms_tree, destdir=where.install_tree, quiet=not inv.verbose)
        cfg = cfg.with_options(jobs=jobs or None, sign_key=where.mok_key if signing else None,
                               sign_cert=where.mok_cert if signing else None)
        self.ctx = Context(cfg, Tree(where.dkms_tree, modules_root=where.install_tree), out,
                           depmod=not inv.no_depmod)
        self.opts = LoadOptions(dkms_tree=where.dkms_tree, source_tree=where.source_tree,
                                install_tree=where.install_tree, etc_dir=inv.etc_dir,
                                directives=tuple(inv.directives))
        self.txn = Transaction(self.ctx)
        self.installed: List[Tuple[Package, Kernel]] = []  # by this command, for the manifests
        self._packages: Dict[Tuple[str, str, str, str], Package] = {}

    @property
    def tree(self) -> Tree:
        return self.ctx.tree

    # ----- kernels ---------------------------------------------------------------
    def targets(self) -> List[Tuple[str, str]]:
        """(kver, arch) to act on: -k (default: the running kernel), or --all built ones."""
        inv = self.inv
        if inv.all:
            name, version = inv.module_version(inv.action)
            return sorted(self.tree.built_kernels(name, version), key=lambda ka: version_key(ka[0]))
        kernels = inv.kernels or [os.uname().release]
        arches = inv.arches or [os.uname().machine] * len(kernels)
        return list(zip(kernels, arches))

    def kernel(self, kver: str, arch: str) -> Kernel:
        """The kernel; headers from --kernelsourcedir, <installtree>/KVER/build or /lib/modules."""
        hdrdir = self.inv.kernel_source_dir
        if hdrdir is None:
            own = self.where.install_tree / kver / "build"
            hdrdir = own if (own / "Makefile").is_file() else Path("/lib/modules") / kver / "build"
        return Kernel.find(kver, machine=arch, hdrdir=hdrdir.absolute(),
                           modules_root=self.where.install_tree)

    # ----- packages ----------------------------------------------------------------
    def load(self, name: str, version: str, kernel: Kernel) -> Package:
        """The package for a kernel (-c, else the tree's definition), evaluated once."""
        key = (name, version, kernel.version, kernel.machine)
        if key not in self._packages:
            path = self.inv.conf or self.tree.definition(name, version)
            self._packages[key] = self.read(path, kernel, name, version)
        return self._packages[key]

    def read(self, path: Path, kernel: Kernel, name: str, version: str) -> Package:
        """Read a definition that must describe name/version (DKMS's read_conf_or_die)."""
        if not path.is_file():
            raise DkmsError(4, "Could not locate dkms.conf file.", f"File: {path} does not exist.")
        try:
            pkg = load_definition(path, self.out.warn, dataclasses.replace(self.opts, kernel=kernel))
        except ConfigError as exc:
            raise DkmsError(8, "Bad conf file.",
                            f"File: {path} does not represent a valid dkms.conf file.",
                            str(exc)) from None
        if (pkg.name, pkg.version) != (name, version):
            raise DkmsError(8, "Bad conf file.", f"File: {path} describes "
                            f"{pkg.name}/{pkg.version}, not {name}/{version}.")
        return pkg

    def loader_for(self, kernel: Kernel) -> Callable[[str, str], Package]:
        return lambda name, version: self.load(name, version, kernel)

    def is_built(self, name: str, version: str, kver: str, arch: str) -> bool:
        return (self.tree.builtdir(name, version, kver, arch) / "module").is_dir()

    def is_installed(self, name: str, version: str, kver: str, arch: str) -> bool:
        return (self.is_built(name, version, kver, arch)
                and self.tree.installed_version(name, kver, arch) == version)

    def require_added(self, name: str, version: str) -> None:
        if not self.tree.is_added(name, version):
            raise DkmsError(3, f"The module/version combo: {name}-{version} is not located "
                               "in the DKMS tree.")

    # ----- add -------------------------------------------------------------------------
    def add(self, name: str, version: str) -> None:
        if self.tree.is_added(name, version):
            raise DkmsError(3, f"DKMS tree already contains: {name}-{version}",
                            "You cannot add the same module/version combo more than once.")
        src = self.where.source_tree / f"{name}-{version}"
        if not src.is_dir():
            raise DkmsError(2, "Could not find module source directory.",
                            f"Directory: {src} does not exist.")
        conf = self.inv.conf or definition_in(src)
        kernel = self.kernel(*self.targets()[0])
        pkg = self.read(conf, kernel, name, version)
        self.out.info(f"Creating symlink {self.tree.verdir(name, version)}/source -> {src}")
        self.tree.add(name, version, src, conf, copy_definition=pkg.fmt == "ckms.ini")
        post_add(self.ctx, pkg, kernel)

    def copy_source(self, path: Path) -> Tuple[str, str]:
        """``add PATH``: copy the tree to <sourcetree>/<module>-<version>, as DKMS does."""
        src = path.resolve()
        try:
            pkg = load_definition(definition_in(src), self.out.warn,
                                  dataclasses.replace(self.opts, kernel=self.kernel(*self.targets()[0])))
        except ConfigError as exc:
            raise DkmsError(10, "Malformed dkms.conf file. Cannot load source tree.", str(exc)) from None
        dest = self.where.source_tree / f"{pkg.name}-{pkg.version}"
        if dest.resolve() != src:
            if self.inv.force and dest.is_dir():
                self.out.info(f"Forcing install of {pkg.name}-{pkg.version}")
                shutil.rmtree(dest)
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return pkg.name, pkg.version

    # ----- build -----------------------------------------------------------------------
    def build(self, pkg: Package, kernel: Kernel) -> None:
        kver, arch = kernel.version, kernel.machine
        if is_root() and owner_ids(self.tree.root)[0] != 0:
            raise DkmsError(1, f"{pkg.name}/{pkg.version} needs a build for {kver}, and builds run "
                               f"as the owner of {self.tree.root}: run 'ckms-dkms build "
                               f"{pkg.name}/{pkg.version} -k {kver}' first")
        self.out.info("")
        self.out.info("Building module:")
        try:
            build(self.ctx_for(kernel), pkg, kernel, force=True)
        except Skipped as exc:
            raise DkmsError(77, str(exc), "This indicates that it should not be built.") from None
        except KernelError:
            raise DkmsError(21, f"Your kernel headers for kernel {kver} cannot be found at "
                                f"{kernel.hdrdir}.",
                            f"Please install the linux-headers-{kver} package or use the "
                            "--kernelsourcedir option to tell DKMS where it's located.") from None
        except ModuleMissing as exc:
            raise DkmsError(7, f" Build of {exc.module} failed for: {kver} ({arch})",
                            "Make sure the name of the generated module is correct and at the root "
                            "of the build directory, or consult make.log in the build directory",
                            f"{exc.logdir} for more information.", str(exc)) from None
        except BuildFailed as exc:
            raise DkmsError(10, f"Bad return status for module build on kernel: {kver} ({arch})",
                            f"Consult {exc.logdir} for more information.", str(exc)) from None

    def ctx_for(self, kernel: Kernel) -> Context:
        """The context to build for kernel: unsigned when it has no sign-file tool, as DKMS."""
        cfg = self.ctx.config
        if cfg.sign_key is None or kernel.sign_file() is not None:
            return self.ctx
        self.out.info(f"Binary {kernel.hdrdir}/scripts/sign-file not found, modules won't be signed")
        return dataclasses.replace(self.ctx, config=dataclasses.replace(cfg, sign_key=None,
                                                                        sign_cert=None))

    def build_one(self, name: str, version: str, kver: str, arch: str) -> None:
        """DKMS's maybe_build_module: add if needed, build unless built (or --force)."""
        if not self.tree.is_added(name, version):
            self.add(name, version)
        if self.is_built(name, version, kver, arch) and not self.inv.force:
            self.out.info(f"Module {name}/{version} already built for kernel {kver} ({arch}), "
                          "skip. You may override by specifying --force.")
            return
        kernel = self.kernel(kver, arch)
        self.build(self.load(name, version, kernel), kernel)

    # ----- install / uninstall -------------------------------------------------------------
    def install_one(self, name: str, version: str, kver: str, arch: str) -> None:
        """DKMS's maybe_install_module: build first if needed, sanity check, install."""
        if self.is_installed(name, version, kver, arch):
            if not self.inv.force:
                self.out.info(f"Module {name}/{version} already installed on kernel {kver} "
                              f"({arch}), skip. You may override by specifying --force.")
                return
            self.uninstall_one(name, version, kver, arch)
        if not self.tree.is_added(name, version):
            self.add(name, version)
        kernel = self.kernel(kver, arch)
        pkg = self.load(name, version, kernel)
        built = self.tree.builtdir(name, version, kver, arch) / "module"
        suffix = self.txn.suffix(kernel)

        def stored(mod: Module) -> Optional[Path]:
            """The built module file: compressed as the kernel stores them, or plain."""
            return next((p for p in (built / f"{mod.dest_name}.ko{s}" for s in (suffix, ""))
                         if p.is_file()), None)
        if not all(stored(m) for m in pkg.modules):
            self.build(pkg, kernel)
        kdir = self.txn.kernel_dir(kernel)
        if not kdir.is_dir():
            raise DkmsError(6, f"The directory {kdir} doesn't exist.",
                            "You cannot install a module onto a non-existant kernel.")
        kept = []
        for mod in pkg.modules:
            self.out.info("")
            self.out.info(f"{mod.dest_name}.ko{suffix}:")
            ours = stored(mod)
            assert ours is not None  # built above
            if self.sane(kdir, kver, ours, mod.dest_name, suffix):
                kept.append(mod)
        if not kept:
            raise DkmsError(6, "Installation aborted.")
        current = self.tree.installed_version(name, kver, arch)
        if current is not None and current != version:
            self.txn.uninstall(name, kernel, self.loader_for(kernel), current)
            self.forget(name, current, kver, arch)
        pkg = dataclasses.replace(pkg, modules=tuple(kept))
        self.txn.install(pkg, kernel, self.loader_for(kernel))
        self.installed.append((pkg, kernel))
        for mod in kept:
            self.out.info(f" - Installation\n   - Installing to {kdir / mod.dest}/")

    def sane(self, kdir: Path, kver: str, ours: Path, name: str, suffix: str) -> bool:
        """DKMS's module version sanity check, with its messages."""
        self.out.info("Running module version sanity check.")
        verdict = check_version_sanity(kdir, kver, ours, name, suffix, self.inv.force,
                                       self.inv.force_version_override)
        report = {"warning": self.out.warn, "error": self.out.error, "notice": self.out.notice}
        if verdict.kind:
            report[verdict.kind](verdict.message)
        return verdict.ok

    def uninstall_one(self, name: str, version: str, kver: str, arch: str) -> None:
        """DKMS's maybe_uninstall_module."""
        if not self.is_installed(name, version, kver, arch):
            self.out.info(f"Module {name} {version} is not installed for kernel {kver} ({arch}). "
                          "Skipping...")
            return
        kernel = self.kernel(kver, arch)
        self.out.info(f"Module {name}-{version} for kernel {kver} ({arch}).")
        self.out.info("Before uninstall, this module version was ACTIVE on this kernel.")
        self.txn.uninstall(name, kernel, self.loader_for(kernel), version)
        self.forget(name, version, kver, arch)

    def forget(self, name: str, version: str, kver: str, arch: str) -> None:
        """Drop the manifest of an install that is gone."""
        (self.tree.builtdir(name, version, kver, arch) / MANIFEST).unlink(missing_ok=True)

    def unbuild_one(self, name: str, version: str, kver: str, arch: str) -> None:
        """DKMS's unbuild for one kernel: uninstall, then drop the build."""
        self.uninstall_one(name, version, kver, arch)
        if not self.is_built(name, version, kver, arch):
            self.out.info(f"Module {name} {version} is not built for kernel {kver} ({arch}). "
                          "Skipping...")
        self.tree.clean(name, version, kver, arch)

    def finish(self) -> None:
        """depmod once per kernel; then the manifests of what stayed installed."""
        try:
            self.txn.finish()
        except CkmsError as exc:
            raise DkmsError(6, "Problems with depmod detected.  Automatically uninstalling this "
                               "module.", "Install Failed (depmod problems).  Module rolled back "
                               "to built state.", str(exc)) from None
        for pkg, kernel in self.installed:
            kver, arch = kernel.version, kernel.machine
            if self.tree.installed_version(pkg.name, kver, arch) != pkg.version:
                continue
            suffix = self.txn.suffix(kernel)
            path = write_manifest(self.tree.builtdir(pkg.name, pkg.version, kver, arch),
                                  self.txn.kernel_dir(kernel),
                                  [(m.dest_name, m.dest_relpath + suffix) for m in pkg.modules])
            chown_to_owner(path, self.tree.root)

    def per_kernel(self, step: Callable[[str, str], None]) -> int:
        """Run step for every target kernel; report failures, go on; the first failure's code."""
        code = 0
        for kver, arch in self.targets():
            try:
                step(kver, arch)
            except CkmsError as exc:
                self.out.error(str(exc))
                code = code or exit_code(exc)
        return code


def definition_in(src: Path) -> Path:
    """A source tree's definition for DKMS: dkms.conf (ckms.ini when there is none)."""
    conf = src / "dkms.conf"
    return conf if conf.is_file() or not (src / "ckms.ini").is_file() else src / "ckms.ini"


# ----- the actions -----------------------------------------------------------------------------
def run(inv: Invocation, where: Locations, out: DkmsOutput) -> int:
    """Run a writing action (everything but status)."""
    s = Session(inv, where, out)
    action = inv.action
    if inv.all and action in ("add", "build", "install", *ONE_KERNEL_ACTIONS):
        raise DkmsError(5, f"The action {action} does not support the --all parameter.")
    if action in ONE_KERNEL_ACTIONS:
        one_kernel(inv, action)
    if action != "generate_mok":
        if not (where.dkms_tree.is_dir() and os.access(where.dkms_tree, os.W_OK)):
            raise DkmsError(1, f"No write access to DKMS tree at {where.dkms_tree}")
        if action in MODULE_DIR_ACTIONS and s.ctx.real_destdir:
            try:
                s.txn.require_rights()
            except PermissionProblem:
                raise DkmsError(1, "You must be root to use this command.") from None
        else:
            drop_to_owner(where.dkms_tree)
    if action == "generate_mok":
        return generate_mok(where, out)
    with s.tree.locked(s.ctx.config.lock_timeout, out.info):
        return ACTIONS[action](s)


def one_kernel(inv: Invocation, action: str) -> None:
    """DKMS's have_one_kernel; kernel_* need the kernel on the command line."""
    if action.startswith("kernel_") and len(inv.kernels) != 1:
        raise DkmsError(4, f"The action {action} requires exactly one kernel version parameter "
                           "on the command line.")
    if len(inv.kernels) > 1:
        raise DkmsError(4, f"The action {action} does not support multiple kernel version "
                           "parameters on the command line.")


def act_add(s: Session) -> int:
    inv = s.inv
    if inv.source_dir is not None and not inv.module:
        name, version = s.copy_source(inv.source_dir)
    else:
        name, version = inv.module_version("add")
    s.add(name, version)
    return 0


def act_build(s: Session) -> int:
    name, version = s.inv.module_version("build")
    return s.per_kernel(lambda k, a: s.build_one(name, version, k, a))


def act_install(s: Session) -> int:
    name, version = s.inv.module_version("install")
    code = s.per_kernel(lambda k, a: s.install_one(name, version, k, a))
    s.finish()
    return code


def act_uninstall(s: Session) -> int:
    return _on_added(s, "uninstall", s.uninstall_one)


def act_unbuild(s: Session) -> int:
    return _on_added(s, "unbuild", s.unbuild_one)


def _on_added(s: Session, action: str, step: Callable[[str, str, str, str], None]) -> int:
    """An added module's step on every target kernel, then depmod once per kernel."""
    name, version = s.inv.module_version(action)
    s.require_added(name, version)
    code = s.per_kernel(lambda k, a: step(name, version, k, a))
    s.finish()
    return code


def act_remove(s: Session) -> int:
    name, version = s.inv.module_version("remove")
    s.require_added(name, version)
    code = s.per_kernel(lambda k, a: s.unbuild_one(name, version, k, a))
    s.finish()
    if not s.tree.built_kernels(name, version):
        s.out.info(f"Deleting module {name}-{version} completely from the DKMS tree.")
        s.tree.remove(name, version)
    return code


def act_match(s: Session) -> int:
    inv, where, out = s.inv, s.where, s.out
    if not inv.template:
        raise DkmsError(1, "Invalid number of parameters passed.",
                        "Usage: match --templatekernel=<kernel-version> -k <kernel-version>",
                        "   or: match --templatekernel=<kernel-version> -k <kernel-version> <module>")
    [(kver, arch)] = s.targets()
    if inv.template == kver:
        raise DkmsError(2, "The templatekernel and the specified kernel version are the same.")
    if inv.module and not (where.dkms_tree / inv.module).is_dir():
        raise DkmsError(3, f"The module: {inv.module} is not located in the DKMS tree.")
    todo = [e for e in scan(where.dkms_tree, where.install_tree, module=inv.module,
                            kernel=inv.template, arch=arch, extras=False) if e.state == "installed"]
    out.info("")
    out.info(f"Matching modules in kernel: {kver} ({arch})")
    out.info(f"to the configuration of kernel: {inv.template} ({arch})")
    if not todo:
        out.info("")
        out.info("There is nothing to be done for this match.")
        return 0
    code = 0
    for entry in todo:
        out.info(f"Module:  {entry.name}")
        out.info(f"Version: {entry.version}")
        try:
            s.build_one(entry.name, entry.version, kver, arch)
            s.install_one(entry.name, entry.version, kver, arch)
        except CkmsError as exc:
            out.error(str(exc))
            code = code or exit_code(exc)
    s.finish()
    return code


def act_autoinstall(s: Session) -> int:
    """Every AUTOINSTALL package, newest version, for one kernel; a summary; exit 11 on failure."""
    [(kver, arch)] = s.targets()
    kernel = s.kernel(kver, arch)
    summary = autoinstall(s.ctx_for(kernel), [kernel], s.opts, force=s.inv.force)
    by: Dict[str, List[str]] = {"succeeded": [], "was skipped": [], "failed": []}
    for row in summary.rows:
        if row.name == "*":  # no headers for the kernel
            if newest_versions(s.ctx):
                raise DkmsError(21, f"Your kernel headers for kernel {kver} cannot be found.",
                                row.detail)
            continue
        what = {SKIPPED: "was skipped", FAILED: "failed"}.get(row.result, "succeeded")
        by[what].append(row.name)
        if row.log:
            s.out.info(f"{row.name}/{row.version}: the log is in {row.log}")
    for what, names in by.items():
        if names:
            s.out.info(f"Autoinstall on {kver} {what} for module(s) {' '.join(names)}.")
    if summary.failed:
        raise DkmsError(11, "One or more modules failed to install during autoinstall.",
                        "Refer to previous errors for more information.")
    return 0


def act_kernel_preinst(s: Session) -> int:
    """Nothing to undo: kernel_postinst rebuilds what the new kernel makes out of date."""
    [(kver, arch)] = s.targets()
    s.out.info(f"Nothing to do before kernel {kver} ({arch}) is installed: builds it makes out of "
               "date are made again by kernel_postinst.")
    return 0


def act_kernel_prerm(s: Session) -> int:
    [(kver, arch)] = s.targets()
    try:
        for line in kernel_removed(s.ctx, kver, arch, loader(s.ctx, s.opts)):
            s.out.info(f"dkms: {line}")
    except CkmsError as exc:
        raise DkmsError(14, f"dkms kernel_prerm for kernel {kver} ({arch}) failed: {exc}") from None
    return 0


def generate_mok(where: Locations, out: DkmsOutput) -> int:
    """DKMS's generate_mok: a self-signed key and certificate for module signing (openssl)."""
    key, cert = where.mok_key, where.mok_cert
    out.info(f"Signing key: {key}")
    out.info(f"Public certificate (MOK): {cert}")
    if cert.is_file() and (key.is_file() or str(key).startswith("pkcs11:")):
        return 0
    out.info("Certificate or key are missing, generating self signed certificate for MOK...")
    if shutil.which("openssl") is None:
        raise DkmsError(1, "openssl not found, can't generate key and certificate.")
    for path in (key, cert):
        path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["openssl", "req", "-new", "-x509", "-nodes", "-days", "36500",
                           "-subj", "/CN=DKMS module signing key", "-newkey", "rsa:2048",
                           "-keyout", str(key), "-outform", "DER", "-out", str(cert)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, umask=0o077)
    if proc.returncode != 0 or not key.is_file() or not cert.is_file():
        raise DkmsError(1, f"Key file {key} not found and can't be generated, modules won't be "
                           "signed", proc.stderr.strip())
    os.chmod(cert, 0o644)
    return 0


ACTIONS: Dict[str, Callable[[Session], int]] = {
    "add": act_add, "build": act_build, "install": act_install, "uninstall": act_uninstall,
    "unbuild": act_unbuild, "remove": act_remove, "match": act_match,
    "autoinstall": act_autoinstall, "kernel_postinst": act_autoinstall,
    "kernel_preinst": act_kernel_preinst, "kernel_prerm": act_kernel_prerm,
}
