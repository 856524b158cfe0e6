"""The ``ckms`` command: a thin layer over the operations."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .build import build
from .config import DEFAULT_CONFIG, load_config
from .context import Context
from .errors import CkmsError, StateError, UsageError
from .formats import find_definition, load_definition
from .install import Transaction
from .kernel import COMPRESSIONS, Kernel
from .model import Package, parse_package_ref
from .privileges import drop_to_owner
from .tree import Tree
from .ui import Output

COMMANDS = {
    "add": "PATH          register the source tree at PATH (holding ckms.ini)",
    "build": "NAME=VER      build the package for the kernel",
    "install": "NAME=VER      install the built package into the kernel's module dir",
    "uninstall": "NAME[=VER]    remove the package's modules from the kernel",
    "clean": "NAME=VER      drop the package's build for the kernel",
    "remove": "NAME=VER      unregister the package (it must not be built anywhere)",
    "status": "[NAME[=VER]]  show the state of packages on kernels",
    "plain-status": "[NAME[=VER]]  the same, as space-separated words",
}

EPILOG = "commands:\n" + "\n".join(f"  {c:<13} {h}" for c, h in COMMANDS.items()) + """

The kernel is the running one unless -k is given.  Exit status: 0 success,
1 an operation failed, 2 usage error, 3 invalid package definition or config,
4 wrong state for the command, 5 kernel headers missing, 6 needs root,
7 lock timeout, 8 build failed.  See ckms(8) and ckms.ini(5)."""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckms", description="Build and install out-of-tree kernel modules.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", metavar="COMMAND", help="one of the commands below")
    p.add_argument("args", nargs="*", metavar="ARG", help="the command's argument")
    p.add_argument("-C", "--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"global configuration file (default: {DEFAULT_CONFIG})")
    p.add_argument("-k", "--kernver", help="kernel version (default: the running kernel)")
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
    p.add_argument("-f", "--force", action="store_true", help="build: build again even if built")
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
    except CkmsError as exc:
        out.error(str(exc))
        return exc.code
    except OSError as exc:
        # e.g. a destdir the state owner cannot write to, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        out.error(f"{where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130


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
    tree = Tree(cfg.statedir)
    tree.require_root()
    ctx = Context(cfg, tree, out, depmod=not args.no_depmod)
    cmd = args.command

    if cmd in ("status", "plain-status"):
        return status(ctx, args)

    if len(args.args) != 1:
        raise UsageError(f"'{cmd}' takes one argument: {COMMANDS[cmd].split()[0]}")
    arg = args.args[0]

    if cmd in ("install", "uninstall") and ctx.real_destdir:
        Transaction(ctx).require_rights()
    else:
        drop_to_owner(cfg.statedir)

    def load(name: str, version: str) -> Package:
        if cmd != "uninstall":  # uninstall only needs the stored definition
            tree.require_added(name, version)
        path = tree.definition(name, version)
        if not path.is_file():
            raise StateError(f"{name}={version} is not added (no {path})")
        pkg = load_definition(path, out.warn)
        if (pkg.name, pkg.version) != (name, version):
            raise StateError(f"{path} defines {pkg.ref}, not {name}={version}")
        return pkg

    if cmd == "add":
        src = Path(arg)
        if not src.is_dir():
            raise UsageError(f"{arg} is not a directory")
        src = src.resolve()
        definition = args.modconf.resolve() if args.modconf else find_definition(src)
        pkg = load_definition(definition, out.warn)
        with tree.locked(cfg.lock_timeout, out.info):
            tree.add(pkg.name, pkg.version, src, definition)
        out.info(f"added {pkg.ref} from {src}")
        return 0

    name, version = parse_package_ref(arg)
    if version is None and cmd != "uninstall":
        raise UsageError(f"'{cmd}' needs NAME=VERSION, got {arg!r}")
    kernel = Kernel.find(args.kernver, hdrdir=args.hdrdir.absolute() if args.hdrdir else None)

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
    kernels = [Kernel.find(args.kernver).version] if args.kernver else None
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
