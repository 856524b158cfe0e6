"""The ``ckms`` command: a thin layer over the operations."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .build import build, hook_env, module_suffix
from .config import DEFAULT_CONFIG, load_config
from .context import Context
from .errors import CkmsError, ConfigError, StateError, UsageError
from .formats import LoadOptions, find_definition, load_definition
from .install import Transaction
from .kernel import COMPRESSIONS, MODULES_ROOT, Kernel
from .model import Package, parse_package_ref
from .privileges import drop_to_owner
from .run import run_logged, tail
from .tree import Tree
from .ui import Output, failure_code

COMMANDS = {
    "add": "PATH          register the source tree at PATH (holding ckms.ini)",
    "build": "NAME=VER      build the package for the kernel",
    "install": "NAME=VER      install the built package into the kernel's module dir",
    "uninstall": "NAME[=VER]    remove the package's modules from the kernel",
    "clean": "NAME=VER      drop the package's build for the kernel",
    "remove": "NAME=VER      unregister the package (it must not be built anywhere)",
    "status": "[NAME[=VER]]  show the state of packages on kernels",
    "plain-status": "[NAME[=VER]]  the same, as space-separated words",
    "autoinstall": "              build and install every automatic package (-k KVER..., --all-kernels)",
    "kernel-removed": "KVER...       drop the installs and builds of kernels being removed",
    "prune": "              the same for every kernel whose module dir is gone",
    "convert": "PATH          print a ckms.ini equivalent to PATH/dkms.conf for the kernel",
}

DRY_RUN = ("autoinstall", "install", "uninstall", "remove", "kernel-removed", "prune")

EPILOG = "commands:\n" + "\n".join(f"  {c:<13} {h}" for c, h in COMMANDS.items()) + """

The kernel is the running one unless -k is given.  Exit status: 0 success,
1 an operation failed (autoinstall: a package failed), 2 usage error,
3 invalid package definition or config, 4 wrong state for the command,
5 kernel headers missing, 6 needs root, 7 lock timeout, 8 build failed,
9 skipped: the package is not for this kernel.  See ckms(8) and ckms.ini(5)."""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckms", description="Build and install out-of-tree kernel modules.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", metavar="COMMAND", help="one of the commands below")
    p.add_argument("args", nargs="*", metavar="ARG", help="the command's argument")
    p.add_argument("-C", "--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"global configuration file (default: {DEFAULT_CONFIG})")
    p.add_argument("-k", "--kernver", action="append",
                   help="kernel version (default: the running kernel); "
                        "autoinstall takes several")
    p.add_argument("--all-kernels", action="store_true",
                   help="autoinstall: every kernel with headers under /lib/modules")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="autoinstall, install, uninstall, remove, kernel-removed, prune: "
                        "print what would be done, change nothing")
    p.add_argument("-c", "--modconf", "--pkgconf", dest="modconf", type=Path,
                   help="package definition to use with 'add' (default: PATH/ckms.ini)")
    p.add_argument("-s", "--statedir", type=Path, help="state directory (default: /var/lib/ckms)")
    p.add_argument("-d", "--destdir", type=Path,
                   help="module destination root (default: /lib/modules); "
                        "installs elsewhere need no root and run no depmod")
    p.add_argument("--hdrdir", type=Path,
                   help="kernel headers to build against (default: /lib/modules/KVER/build)")
    p.add_argument("-D", "--no-depmod", action="store_true", help="do not run depmod")
    p.add_argument("-j", "--jobs", type=int, help="parallel build jobs (default: CPUs)")
    p.add_argument("-x", "--compression", choices=sorted(COMPRESSIONS),
                   help="compress installed modules so (default: as the kernel does)")
    p.add_argument("-q", "--quiet", action="store_true", default=None,
                   help="do not copy build output to the terminal")
    p.add_argument("-L", "--no-color", action="store_true", help="no colors in the output")
    p.add_argument("-f", "--force", action="store_true",
                   help="build, autoinstall: build again even if the build is up to date")
    p.add_argument("--sign", dest="sign_key", type=Path, metavar="KEY",
                   help="sign modules with this private key (PEM)")
    p.add_argument("--sign-cert", type=Path, metavar="CERT",
                   help="certificate for --sign (default: the KEY file)")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--version", action="version", version=f"ckms {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_intermixed_args(argv)
    out = Output(quiet=bool(args.quiet), color=False if args.no_color else None)
    try:
        return run(args, out)
    except (CkmsError, OSError, KeyboardInterrupt) as exc:
        return failure_code(out, exc)


def run(args: argparse.Namespace, out: Output) -> int:
    if args.command not in COMMANDS:
        raise UsageError(f"unknown command {args.command!r}; see 'ckms --help'")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("-j needs a positive number")
    cfg = load_config(args.config, out.warn, required=args.config != DEFAULT_CONFIG)
    cfg = cfg.with_options(statedir=args.statedir, destdir=args.destdir, jobs=args.jobs,
                           compression=args.compression, quiet=args.quiet,
                           sign_key=args.sign_key,
                           sign_cert=args.sign_cert or args.sign_key)
    # hooks and tools run in other directories: make the paths absolute
    cfg = cfg.with_options(statedir=cfg.statedir.absolute(), destdir=cfg.destdir.absolute())
    out.quiet = cfg.quiet
    cmd = args.command
    opts = LoadOptions(dkms_tree=cfg.statedir, install_tree=cfg.destdir)
    kvers = args.kernver or []
    if len(kvers) > 1 and cmd != "autoinstall":
        raise UsageError(f"'{cmd}' takes one -k KVER")
    if args.dry_run and cmd not in DRY_RUN:
        raise UsageError(f"'{cmd}' has no --dry-run")
    if args.hdrdir and cmd in ("autoinstall", "kernel-removed", "prune"):
        raise UsageError(f"'{cmd}' builds against each kernel's own headers: drop --hdrdir")
    if cmd == "convert":  # needs no state tree
        if len(args.args) != 1:
            raise UsageError("'convert' takes one argument: PATH")
        return convert(Path(args.args[0]), args.modconf,
                       dataclasses.replace(opts, kernel=Kernel.find(kvers[0] if kvers else None)), out)
    tree = Tree(cfg.statedir, modules_root=cfg.destdir)  # disable markers live in the destdir
    tree.require_root()
    ctx = Context(cfg, tree, out, depmod=not args.no_depmod)

    if cmd in ("status", "plain-status"):
        return status(ctx, args)
    if cmd in ("autoinstall", "kernel-removed", "prune"):
        return lifecycle_command(ctx, args, opts)

    if len(args.args) != 1:
        raise UsageError(f"'{cmd}' takes one argument: {COMMANDS[cmd].split()[0]}")
    arg = args.args[0]

    if cmd in ("install", "uninstall") and ctx.real_destdir and not args.dry_run:
        Transaction(ctx).require_rights()
    else:
        drop_to_owner(cfg.statedir)

    def load(name: str, version: str) -> Package:
        if cmd != "uninstall":  # uninstall only needs the stored definition
            tree.require_added(name, version)
        path = tree.definition(name, version)
        if not path.is_file():
            raise StateError(f"{name}={version} is not added (no {path})")
        pkg = load_definition(path, out.warn, dataclasses.replace(opts, kernel=kernel))
        if (pkg.name, pkg.version) != (name, version):
            raise StateError(f"{path} defines {pkg.ref}, not {name}={version}")
        return pkg

    if cmd == "add":
        src = Path(arg)
        if not src.is_dir():
            raise UsageError(f"{arg} is not a directory")
        src = src.resolve()
        definition = args.modconf.resolve() if args.modconf else find_definition(src)
        kernel = Kernel.find(kvers[0] if kvers else None)
        pkg = load_definition(definition, out.warn, dataclasses.replace(opts, kernel=kernel))
        if pkg.fmt == "dkms.conf" and definition != src / "dkms.conf":
            raise UsageError(f"a dkms.conf is read from its source tree: copy {definition} "
                             f"to {src}/dkms.conf")
        with tree.locked(cfg.lock_timeout, out.info):
            tree.add(pkg.name, pkg.version, src, definition,
                     copy_definition=pkg.fmt == "ckms.ini")
        out.info(f"added {pkg.ref} from {src}")
        post_add(ctx, pkg, kernel)
        return 0

    name, version = parse_package_ref(arg)
    if version is None and cmd != "uninstall":
        raise UsageError(f"'{cmd}' needs NAME=VERSION, got {arg!r}")
    kernel = Kernel.find(kvers[0] if kvers else None,
                         hdrdir=args.hdrdir.absolute() if args.hdrdir else None)
    if args.dry_run:
        return dry_run(ctx, cmd, name, version, kernel, load)

    with tree.locked(cfg.lock_timeout, out.info):
        if cmd == "build":
            assert version is not None
            build(ctx, load(name, version), kernel, force=args.force)
        elif cmd in ("install", "uninstall"):
            txn = Transaction(ctx)
            try:
                if cmd == "install":
                    assert version is not None
                    txn.install(load(name, version), kernel, load)
                else:
                    txn.uninstall(name, kernel, load, version)
            finally:
                txn.finish()  # depmod for whatever changed, even after an error
        elif cmd == "clean":
            assert version is not None
            tree.require_added(name, version)
            if not tree.clean(name, version, kernel.version, kernel.machine):
                raise StateError(f"{name}={version} is not built for "
                                 f"{kernel.version}/{kernel.machine}")
            out.info(f"cleaned {name}={version} for {kernel.version}/{kernel.machine}")
        elif cmd == "remove":
            assert version is not None
            tree.require_added(name, version)
            tree.remove(name, version)
            out.info(f"removed {name}={version}")
    return 0


def status(ctx: Context, args: argparse.Namespace) -> int:
    if len(args.args) > 1:
        raise UsageError("'status' takes at most one NAME[=VERSION]")
    name = version = None
    if args.args:
        name, version = parse_package_ref(args.args[0])
    kernels = [Kernel.find(args.kernver[0]).version] if args.kernver else None
    lines = ctx.tree.status(name, version, kernels, default_arch=os.uname().machine)
    if args.json:
        json.dump([line.__dict__ for line in lines], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for line in lines:
        if args.command == "plain-status":
            print(line.plain())
        else:
            print(line.pretty() + (f" (log: {line.log})" if line.log and line.state == "failed" else ""))
    return 0


def lifecycle_command(ctx: Context, args: argparse.Namespace, opts: LoadOptions) -> int:
    """autoinstall, kernel-removed, prune."""
    # imported here: its thread pool and progress display are not for status's start-up
    from .lifecycle import autoinstall, gone_kernels, kernel_removed, kernels_with_headers, loader
    cmd, out, cfg = args.command, ctx.out, ctx.config
    machine = os.uname().machine
    if cmd == "autoinstall":
        if args.args:
            raise UsageError("'autoinstall' takes no argument; choose kernels with -k KVER")
        if args.kernver and args.all_kernels:
            raise UsageError("give -k KVER or --all-kernels, not both")
        kernels = (kernels_with_headers(MODULES_ROOT) if args.all_kernels
                   else [Kernel.find(k) for k in args.kernver or [None]])
    elif cmd == "kernel-removed":
        if not args.args:
            raise UsageError("'kernel-removed' needs the versions of the kernels being removed")
        targets = [(Kernel.find(k).version, machine) for k in args.args]
    else:
        if args.args:
            raise UsageError("'prune' takes no argument")
        targets = list(gone_kernels(ctx))
    if not args.dry_run and ctx.real_destdir:
        Transaction(ctx).require_rights()
    elif not args.dry_run:
        drop_to_owner(cfg.statedir)
    with (contextlib.nullcontext() if args.dry_run else ctx.tree.locked(cfg.lock_timeout, out.info)):
        if cmd == "autoinstall":
            summary = autoinstall(ctx, kernels, opts, force=args.force, dry_run=args.dry_run)
            if not summary.rows:
                out.info("no package is marked for automatic install")
                return 0
            print(summary.table())
            for row in summary.rows:
                if row.log:
                    print(f"{row.name} {row.version} on {row.kernel}: log in {row.log}")
            return 1 if summary.failed else 0
        load = loader(ctx, opts)
        for kver, arch in targets:
            for line in kernel_removed(ctx, kver, arch, load, dry_run=args.dry_run):
                print(("would " if args.dry_run else "") + line)
    return 0


def dry_run(ctx: Context, cmd: str, name: str, version: Optional[str], kernel: Kernel,
            load: Callable[[str, str], Package]) -> int:
    """install, uninstall, remove with --dry-run: what would change, from the current state."""
    tree, kver, arch = ctx.tree, kernel.version, kernel.machine
    kdir = ctx.config.destdir / kver
    current = tree.installed_version(name, kver, arch)
    if cmd == "remove":
        assert version is not None
        tree.require_added(name, version)
        built = tree.built_kernels(name, version)
        if built:
            raise StateError(f"{name}={version} is still built for: "
                             + ", ".join(f"{k} ({a})" for k, a in built))
        print(f"would remove {name}={version}: {tree.verdir(name, version)}")
        return 0
    if cmd == "uninstall":
        if current is None or (version is not None and current != version):
            raise StateError(f"{name} is not installed for {kver}/{arch}")
        pkg = load(name, current)
        for mod in pkg.modules:
            for path in sorted(kdir.glob(mod.dest_relpath + "*")):
                print(f"would remove {path}")
        originals = tree.originals(name, kver, arch)
        for path in sorted(p for p in originals.rglob("*") if p.is_file()):
            print(f"would restore {kdir / path.relative_to(originals)}")
    else:
        assert version is not None
        pkg = load(name, version)
        if current == version:
            print(f"{pkg.ref} is already installed for {kver}/{arch}: nothing to do")
            return 0
        if current is not None:
            raise StateError(f"{name}={current} is installed for {kver}; uninstall it first")
        if not tree.is_built(name, version, kver, arch):
            raise StateError(f"{pkg.ref} is not built for {kver}/{arch}")
        sfx = module_suffix(ctx, kernel)
        for mod in pkg.modules:
            target = kdir / (mod.dest_relpath + sfx)
            for old in sorted(kdir.glob(mod.dest_relpath + "*")):
                print(f"would keep the original {old} (restored on uninstall)")
            print(f"would install {target}")
    if ctx.depmod and ctx.real_destdir:
        print(f"would run depmod for {kver}")
    return 0


def post_add(ctx: Context, pkg: Package, kernel: Kernel) -> None:
    """The post_add hook (DKMS's POST_ADD), in the source tree, after the add."""
    cmd = pkg.hooks.get("post_add")
    if cmd is None:
        return
    log = ctx.tree.verdir(pkg.name, pkg.version) / ".post_add.log"  # DKMS takes dirs for kernels
    rc = run_logged(cmd, cwd=ctx.tree.source(pkg.name, pkg.version),
                    env=hook_env(ctx, pkg, kernel), log=log, echo=ctx.out.echo())
    if rc != 0:
        ctx.out.warn(f"post_add hook of {pkg.ref} failed (exit status {rc}); "
                     f"log: {log}\n{tail(log)}")


def convert(src: Path, modconf: Optional[Path], opts: LoadOptions, out: Output) -> int:
    """Print a ckms.ini equivalent to the dkms.conf of src, for the kernel of opts."""
    from .formats.convert import convert as convert_dkms_conf
    if not src.is_dir():
        raise UsageError(f"{src} is not a directory")
    definition = modconf.resolve() if modconf else src.resolve() / "dkms.conf"
    if not definition.is_file():
        raise ConfigError(f"{src}: no dkms.conf found; pass the definition with -c FILE")
    text, problems = convert_dkms_conf(definition, out.warn, opts)
    sys.stdout.write(text)
    for problem in problems:
        out.warn(f"{definition}: not converted: {problem}")
    return 0
