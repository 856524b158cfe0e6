"""The build pipeline: copy, hooks (or kbuild), collect, strip, sign, publish.

A build happens in a private directory ``<version>/.build-<kver>-<arch>-*``
holding a fresh copy of the source; it becomes the *built* state with one
``rename`` once every module file is in place.  A failed build is renamed to
``<version>/.failed-<kver>-<arch>`` instead, logs and build tree kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from .context import Context
from .errors import BuildFailed, CkmsError, ConfigError, ModuleMissing, Skipped
from .jobs import JobServer
from .kernel import COMPRESSIONS, Kernel
from .model import BoolSpec, Package, ShellBool, version_key
from .run import base_env, recompressed, run_logged, run_quiet, tail

FINGERPRINT = ".ckms-build.json"  # in the built dir: what the build was made from
Progress = Callable[[str], None]  # told each phase of a build as it starts

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
        "CKMS_SOURCE_DIR": str(ctx.tree.verdir(pkg.name, pkg.version) / "source"),
        "CKMS_DESTDIR": str(cfg.destdir),
    })
    if ctx.depmod and ctx.real_destdir:
        env["CKMS_DEPMOD"] = "1"
    for arg in kernel.make_args():
        key, _, value = arg.partition("=")
        env[key] = value
    env.update(cfg.build_env)
    return env


def default_build_command() -> str:
    """kbuild; the number of jobs comes from ckms's jobserver through MAKEFLAGS."""
    return ('${MAKE} -C "${CKMS_KERNEL_HDRDIR}" M="$PWD" '
            'KERNELRELEASE="${CKMS_KERNEL_VERSION}" ${CKMS_MAKE_ARGS} modules')


def evaluate(spec: BoolSpec, cwd: Path, env: Dict[str, str]) -> bool:
    if isinstance(spec, ShellBool):
        return run_quiet(["/bin/sh", "-c", spec.expr], cwd=cwd, env=env).returncode == 0
    return spec


def signing_key(ctx: Context, kernel: Kernel) -> Optional[Tuple[Path, Path]]:
    cfg = ctx.config
    if cfg.sign_key:
        return cfg.sign_key, cfg.sign_cert or cfg.sign_key
    return kernel.own_signing_key()


def module_suffix(ctx: Context, kernel: Kernel) -> str:
    """How modules for kernel are stored: '', '.gz', '.xz' or '.zst'."""
    comp = ctx.config.compression
    return COMPRESSIONS[comp] if comp else kernel.compression()


def check_gates(ctx: Context, pkg: Package, kernel: Kernel) -> None:
    """Raise Skipped when the package is not for this kernel."""
    kver = kernel.version
    marker = ctx.tree.modules_root / kver / "ckms-disable" / pkg.name / pkg.version
    if ctx.tree.is_disabled(pkg.name, pkg.version, kver):
        raise Skipped(f"{pkg.ref} is disabled for {kver} ({marker})")
    why = pkg.exclusive.why_not(kver, kernel.machine, kernel.config)
    if why:
        raise Skipped(f"{pkg.ref} is not for this kernel (BUILD_EXCLUSIVE): {why}")
    if pkg.obsolete_by and version_key(kver) >= version_key(pkg.obsolete_by):
        raise Skipped(f"{pkg.ref} is obsolete from kernel {pkg.obsolete_by} on "
                      f"(OBSOLETE_BY): {kver} has it built in")


def fingerprint(ctx: Context, pkg: Package, kernel: Kernel) -> Dict[str, str]:
    """Digests of everything a build depends on, by part."""
    cfg = ctx.config
    settings = repr((pkg, cfg.strip, cfg.make_build_args, sorted(cfg.build_env.items()),
                     cfg.sign_key, cfg.sign_cert, kernel.make_args(), module_suffix(ctx, kernel)))
    clang = kernel.config.get("CONFIG_CC_IS_CLANG") == "y"
    compiler = "clang" if clang else kernel.config.get("CONFIG_CC_VERSION_TEXT", "gcc").split(" ", 1)[0]
    linker = "ld.lld" if kernel.config.get("CONFIG_LD_IS_LLD") == "y" else "ld"
    tools = (compiler, linker, resolve_make_quiet(pkg.make), "strip")
    source = ctx.tree.source(pkg.name, pkg.version)
    return {
        "source": ctx.digest(("source", str(source)), lambda: _tree_digest(source)),
        "definition": _digest(settings.encode()),
        "kernel headers": ctx.digest(("headers", str(kernel.hdrdir)), lambda: _digest(b"".join(
            _read(kernel.hdrdir / f) for f in (".config", "Module.symvers", "Makefile")))),
        "toolchain": ctx.digest(("toolchain", *tools), lambda: _digest(
            "\n".join(_stat_tool(t) for t in tools).encode())),
    }


def stored_fingerprint(built: Path) -> Optional[Dict[str, str]]:
    """The fingerprint a build was made with (None for builds made by DKMS)."""
    try:
        data = json.loads((built / FINGERPRINT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def outdated(built: Path, current: Dict[str, str]) -> list[str]:
    """What changed since the build at built was made ([] when it is up to date)."""
    old = stored_fingerprint(built)
    if old is None:
        return []  # made by DKMS or an older ckms: nothing to compare, keep it
    return [part for part, digest in current.items() if old.get(part) != digest]


def build(ctx: Context, pkg: Package, kernel: Kernel, force: bool = False,
          jobserver: Optional[JobServer] = None, progress: Optional[Progress] = None) -> Path:
    """Build pkg for kernel (the caller holds the tree's lock). Returns the built dir.

    An existing build is kept when nothing it was made from changed (see
    ``fingerprint``), else made again; ``force`` always builds again.
    """
    tree, out = ctx.tree, ctx.out
    kver, arch = kernel.version, kernel.machine
    target = tree.builtdir(pkg.name, pkg.version, kver, arch)
    check_gates(ctx, pkg, kernel)
    kernel.require_headers()
    prints = fingerprint(ctx, pkg, kernel)
    if target.is_dir() and not force:
        changed = outdated(target, prints)
        if not changed:
            out.info(f"{pkg.ref} is already built for {kver}/{arch}")
            return target
        out.info(f"the build of {pkg.ref} for {kver}/{arch} is out of date "
                 f"({', '.join(changed)} changed): building again")
    source = tree.source(pkg.name, pkg.version)
    key = signing_key(ctx, kernel)
    sign_tool = kernel.sign_file() if key else None
    if key and not sign_tool:
        raise CkmsError(f"a signing key is configured but {kernel.hdrdir}/scripts/sign-file is "
                        "missing; install the linux-kbuild package of this kernel")
    env = hook_env(ctx, pkg, kernel)
    own_jobs = None
    if jobserver is None:
        own_jobs = jobserver = JobServer(ctx.config.jobs)
    env.update(jobserver.env())
    tell = progress or (lambda phase: None)
    sfx = module_suffix(ctx, kernel)

    verdir = tree.verdir(pkg.name, pkg.version)
    work = Path(tempfile.mkdtemp(prefix=f".build-{kver}-{arch}-", dir=verdir))
    os.chmod(work, 0o755)
    builddir, logdir, moddir = work / "build", work / "log", work / "module"
    out.info(f"building {pkg.ref} for {kver}/{arch}")
    try:
        with (jobserver.slot() if own_jobs else contextlib.nullcontext()):
            tell("copy")
            shutil.copytree(source, builddir, symlinks=True)
            logdir.mkdir()
            moddir.mkdir()
            for patch in pkg.patches:
                tell("patch")
                _tool(["patch", "-p1", "-N", "-i", str(builddir / patch)], "patch", pkg, kver,
                      logdir, env, cwd=builddir)
            for hook in BUILD_HOOKS:
                cmd = pkg.hooks.get(hook)
                if hook == "build" and cmd is None:
                    cmd = default_build_command()
                if cmd is None:
                    continue
                tell(hook)
                out.info(f"running {hook}...")
                log = logdir / f"{hook}.log"
                rc = run_logged(cmd, cwd=builddir, env=env, log=log, echo=out.echo(),
                                pass_fds=jobserver.fds)
                if rc != 0:
                    raise BuildFailed(f"{hook} of {pkg.ref} for {kver} failed (exit status {rc}); "
                                      f"last lines of {log}:\n{tail(log)}", str(log))
            tell("collect")
            for mod in pkg.modules:
                built = builddir / mod.location / f"{mod.name}.ko"
                real = Path(os.path.realpath(built))
                if not built.is_file() or not real.is_relative_to(builddir.resolve()):
                    raise ModuleMissing(f"{pkg.ref}: the build produced no {mod.location}/{mod.name}.ko "
                                        f"for {kver}; see the logs in {logdir}", str(logdir),
                                        f"{mod.name}.ko")
                dest = moddir / f"{mod.dest_name}.ko"  # DKMS's layout: named as installed
                shutil.copyfile(real, dest)
                os.chmod(dest, 0o644)
                do_strip = evaluate(mod.strip if mod.strip is not None else pkg.strip, builddir, env)
                if do_strip:
                    _tool(shlex.split(ctx.config.strip) + [str(dest)], "strip", pkg, kver, logdir, env)
                if key and sign_tool:
                    tell("sign")
                    _tool([str(sign_tool), kernel.sig_hash, str(key[0]), str(key[1]), str(dest)],
                          "sign", pkg, kver, logdir, env)
                if sfx:  # kept as the kernel stores modules, as DKMS keeps them
                    Path(f"{dest}{sfx}").write_bytes(recompressed(dest, sfx))
                    os.chmod(f"{dest}{sfx}", 0o644)
                    dest.unlink()
            shutil.rmtree(builddir)
            (work / FINGERPRINT).write_text(json.dumps(prints, indent=1) + "\n")
    except BaseException as exc:
        failed = tree.faileddir(pkg.name, pkg.version, kver, arch)
        _replace_dir(work, failed)
        if isinstance(exc, ModuleMissing):
            raise ModuleMissing(str(exc).replace(str(work), str(failed)),
                                (exc.logdir or "").replace(str(work), str(failed)), exc.module) from None
        if isinstance(exc, BuildFailed):
            logpath = (exc.logdir or "").replace(str(work), str(failed))
            raise BuildFailed(str(exc).replace(str(work), str(failed)), logpath) from None
        raise
    finally:
        if own_jobs:
            own_jobs.close()
    target.parent.mkdir(exist_ok=True)
    _replace_dir(work, target)
    shutil.rmtree(tree.faileddir(pkg.name, pkg.version, kver, arch), ignore_errors=True)
    out.info(f"built {pkg.ref} for {kver}/{arch}")
    return target


def _tool(argv: list[str], what: str, pkg: Package, kver: str, logdir: Path,
          env: Dict[str, str], cwd: Optional[Path] = None) -> None:
    log = logdir / f"{what}.log"
    rc = run_logged(argv, cwd=cwd or logdir, env=env, log=log)
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


def resolve_make_quiet(make: str) -> str:
    try:
        return resolve_make(make)
    except ConfigError:
        return make


def _stat_tool(name: str) -> str:
    """A tool's identity, cheaply: its real path, size and mtime."""
    found = shutil.which(name)
    if not found:
        return f"{name}: missing"
    real = os.path.realpath(found)
    st = os.stat(real)
    return f"{name}: {real} {st.st_size} {st.st_mtime_ns}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _tree_digest(top: Path) -> str:
    """Digest of a source tree: every path, file mode, content and link target."""
    h = hashlib.sha256()
    base = str(top.resolve())
    for dirpath, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if os.path.islink(path):
                h.update(os.readlink(path).encode())
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()
