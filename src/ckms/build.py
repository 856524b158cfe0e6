"""The build pipeline: copy, hooks (or kbuild), collect, strip, sign, publish.

A build happens in a private directory ``<version>/.build-<kver>-<arch>-*``
holding a fresh copy of the source; it becomes the *built* state with one
``rename`` once every module file is in place.  A failed build is renamed to
``<version>/.failed-<kver>-<arch>`` instead, logs and build tree kept.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

from .context import Context
from .errors import BuildFailed, CkmsError, ConfigError, StateError
from .kernel import Kernel
from .model import BoolSpec, Package, ShellBool
from .run import base_env, run_logged, run_quiet, tail

BUILD_HOOKS = ("configure", "pre_build", "build", "post_build")


def resolve_make(make: str) -> str:
    """The make program; 'gmake' falls back to a GNU 'make' (CKMS's rule)."""
    if shutil.which(make):
        return make
    if make == "gmake" and shutil.which("make"):
        ver = run_quiet(["make", "--version"]).stdout
        if ver.startswith("GNU Make"):
            return "make"
    raise ConfigError(f"make program {make!r} not found: install it or set 'make' in [general]")


def hook_env(ctx: Context, pkg: Package, kernel: Kernel) -> Dict[str, str]:
    """The environment hooks (and the default kbuild make) run in."""
    cfg = ctx.config
    make_args = [*kernel.make_args(), cfg.make_build_args.strip()]
    env = base_env()
    env.update({
        "MAKE": resolve_make(pkg.make),
        "CKMS_PACKAGE_NAME": pkg.name,
        "CKMS_PACKAGE_VERSION": pkg.version,
        "CKMS_KERNEL_VERSION": kernel.version,
        "CKMS_KERNEL_MACHINE": kernel.machine,
        "CKMS_KERNEL_ARCH": kernel.arch,
        "CKMS_KERNEL_HDRDIR": str(kernel.hdrdir),
        "CKMS_JOBS": str(cfg.jobs),
        "CKMS_MAKE_ARGS": " ".join(a for a in make_args if a),
        "CKMS_STATEDIR": str(cfg.statedir),
        "CKMS_DESTDIR": str(cfg.destdir),
    })
    if ctx.depmod and ctx.real_destdir:
        env["CKMS_DEPMOD"] = "1"
    for arg in kernel.make_args():
        key, _, value = arg.partition("=")
        env[key] = value
    env.update(cfg.build_env)
    return env


def default_build_command(kernel: Kernel, jobs: int) -> str:
    return (f'${{MAKE}} -j{jobs} -C "${{CKMS_KERNEL_HDRDIR}}" M="$PWD" '
            f'KERNELRELEASE="${{CKMS_KERNEL_VERSION}}" ${{CKMS_MAKE_ARGS}} modules')


def evaluate(spec: BoolSpec, cwd: Path, env: Dict[str, str]) -> bool:
    if isinstance(spec, ShellBool):
        return run_quiet(["/bin/sh", "-c", spec.expr], cwd=cwd, env=env).returncode == 0
    return spec


def signing_key(ctx: Context, kernel: Kernel) -> Optional[Tuple[Path, Path]]:
    cfg = ctx.config
    if cfg.sign_key:
        return cfg.sign_key, cfg.sign_cert or cfg.sign_key
    return kernel.own_signing_key()


def build(ctx: Context, pkg: Package, kernel: Kernel, force: bool = False) -> Path:
    """Build pkg for kernel (the caller holds the tree's lock). Returns the built dir."""
    tree, out = ctx.tree, ctx.out
    kver, arch = kernel.version, kernel.machine
    target = tree.builtdir(pkg.name, pkg.version, kver, arch)
    if tree.is_disabled(pkg.name, pkg.version, kver):
        raise StateError(f"{pkg.ref} is disabled for {kver} "
                         f"({tree.modules_root / kver / 'ckms-disable' / pkg.name / pkg.version})")
    if target.is_dir() and not force:
        out.info(f"{pkg.ref} is already built for {kver}/{arch}")
        return target
    kernel.require_headers()
    source = tree.source(pkg.name, pkg.version)
    key = signing_key(ctx, kernel)
    sign_tool = kernel.sign_file() if key else None
    if key and not sign_tool:
        raise CkmsError(f"a signing key is configured but {kernel.hdrdir}/scripts/sign-file is "
                        "missing; install the linux-kbuild package of this kernel")
    env = hook_env(ctx, pkg, kernel)

    verdir = tree.verdir(pkg.name, pkg.version)
    work = Path(tempfile.mkdtemp(prefix=f".build-{kver}-{arch}-", dir=verdir))
    os.chmod(work, 0o755)
    builddir, logdir, moddir = work / "build", work / "log", work / "module"
    out.info(f"building {pkg.ref} for {kver}/{arch}")
    try:
        shutil.copytree(source, builddir, symlinks=True)
        logdir.mkdir()
        moddir.mkdir()
        for hook in BUILD_HOOKS:
            cmd = pkg.hooks.get(hook)
            if hook == "build" and cmd is None:
                cmd = default_build_command(kernel, ctx.config.jobs)
            if cmd is None:
                continue
            out.info(f"running {hook}...")
            log = logdir / f"{hook}.log"
            rc = run_logged(cmd, cwd=builddir, env=env, log=log, echo=out.echo())
            if rc != 0:
                raise BuildFailed(f"{hook} of {pkg.ref} for {kver} failed (exit status {rc}); "
                                  f"last lines of {log}:\n{tail(log)}", str(log))
        for mod in pkg.modules:
            built = builddir / mod.location / f"{mod.name}.ko"
            real = Path(os.path.realpath(built))
            if not built.is_file() or not real.is_relative_to(builddir.resolve()):
                raise BuildFailed(f"{pkg.ref}: the build produced no {mod.location}/{mod.name}.ko "
                                  f"for {kver}; see the logs in {logdir}", str(logdir))
            dest = moddir / f"{mod.name}.ko"
            shutil.copyfile(real, dest)
            os.chmod(dest, 0o644)
            do_strip = evaluate(mod.strip if mod.strip is not None else pkg.strip, builddir, env)
            if do_strip:
                _tool(shlex.split(ctx.config.strip) + [str(dest)], "strip", pkg, kver, logdir, env)
            if key and sign_tool:
                _tool([str(sign_tool), kernel.sig_hash, str(key[0]), str(key[1]), str(dest)],
                      "sign", pkg, kver, logdir, env)
        shutil.rmtree(builddir)
    except BaseException as exc:
        failed = tree.faileddir(pkg.name, pkg.version, kver, arch)
        _replace_dir(work, failed)
        if isinstance(exc, BuildFailed):
            logpath = (exc.logdir or "").replace(str(work), str(failed))
            raise BuildFailed(str(exc).replace(str(work), str(failed)), logpath) from None
        raise
    target.parent.mkdir(exist_ok=True)
    _replace_dir(work, target)
    shutil.rmtree(tree.faileddir(pkg.name, pkg.version, kver, arch), ignore_errors=True)
    out.info(f"built {pkg.ref} for {kver}/{arch}")
    return target


def _tool(argv: list[str], what: str, pkg: Package, kver: str, logdir: Path,
          env: Dict[str, str]) -> None:
    log = logdir / f"{what}.log"
    rc = run_logged(argv, cwd=logdir, env=env, log=log)
    if rc != 0:
        raise BuildFailed(f"{what} failed for {pkg.ref} on {kver} (exit status {rc}); "
                          f"see {log}:\n{tail(log)}", str(logdir))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst, replacing any old dst; dst is never half-written."""
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=dst.parent))
        os.rename(dst, trash / "old")
        os.rename(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(src, dst)
