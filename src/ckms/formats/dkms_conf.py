"""``dkms.conf`` -> Package, for one kernel.

A dkms.conf is a bash script that DKMS sources for each kernel.  It is
evaluated here once per (package, kernel), by ``shell.evaluate``: never as
root, in a clean environment with the variables DKMS gives, followed by the
per-module override files of ``/etc/dkms``; only DKMS's directives are read
back.  They are then interpreted the way DKMS 3.x's ``read_conf`` does (the
build command for the kernel, the module records, the destination on
Debian/Ubuntu/Arch...) and checked with DKMS's messages.  See
ckms-dkms.conf(5), which also lists the deliberate differences.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..kernel import Kernel
from ..model import Exclusive, Module, Package, check_name
from . import LoadOptions
from .ckms_ini import parse_bool
from .shell import Values, Warn, eval_ids, evaluate

# The directives ckms reads, in the order of ckms-dkms.conf(5).
DIRECTIVES = (
    "PACKAGE_NAME", "PACKAGE_VERSION",
    "MAKE", "MAKE_MATCH",
    "BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION",
    "STRIP",
    "PATCH", "PATCH_MATCH",
    "PRE_BUILD", "POST_BUILD", "POST_ADD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE",
    "AUTOINSTALL", "BUILD_DEPENDS", "BUILD_DEPENDS_REBUILD",
    "BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_KERNEL_MIN", "BUILD_EXCLUSIVE_KERNEL_MAX",
    "BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_CONFIG",
    "NO_WEAK_MODULES", "OBSOLETE_BY",
)
# Accepted with a warning, and ignored.
DEPRECATED = {
    "CLEAN": "ckms builds in a fresh copy of the source, there is nothing to clean",
    "REMAKE_INITRD": "ckms never regenerates the initramfs on its own",
    "MODULES_CONF": "write a file in /etc/modprobe.d instead",
    "MODULES_CONF_ALIAS_TYPE": "write a file in /etc/modprobe.d instead",
    "MODULES_CONF_OBSOLETES": "write a file in /etc/modprobe.d instead",
    "MODULES_CONF_OBSOLETE_ONLY": "write a file in /etc/modprobe.d instead",
    "SIGN_FILE": "set sign_file in framework.conf",
    "MOK_SIGNING_KEY": "set mok_signing_key in framework.conf",
    "MOK_CERTIFICATE": "set mok_certificate in framework.conf",
}
# What DKMS 3.x reads from /etc/dkms/framework.conf and framework.conf.d/*.conf.
FRAMEWORK_VARIABLES = (
    "source_tree", "dkms_tree", "install_tree", "tmp_location", "verbose", "symlink_modules",
    "autoinstall_all_kernels", "modprobe_on_install", "parallel_jobs",
    "compress_gzip_opts", "compress_xz_opts", "compress_zstd_opts",
    "sign_file", "mok_signing_key", "mok_certificate", "post_transaction",
)
MODULE_FAMILY = ("BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME",
                 "DEST_MODULE_LOCATION")
EXCLUSIVE = ("BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_KERNEL_MIN", "BUILD_EXCLUSIVE_KERNEL_MAX",
             "BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_CONFIG")
# DKMS runs PRE_BUILD/POST_BUILD in the build directory, the others in the source.
SCRIPT_HOOKS = {"PRE_BUILD": ("pre_build", False), "POST_BUILD": ("post_build", False),
                "POST_ADD": ("post_add", True), "PRE_INSTALL": ("pre_install", True),
                "POST_INSTALL": ("post_install", True), "POST_REMOVE": ("post_remove", True)}
# DKMS's override_dest_module_location: distribution prefix -> where modules go.
DEST_OVERRIDES = ((("fedora", "rhel", "ovm"), "/extra"),
                  (("sles", "suse", "opensuse"), "/updates"),
                  (("debian", "ubuntu", "arch"), "/updates/dkms"))
DEST_PREFIXES = ("/kernel", "/updates", "/extra")
SHELL = "bash --noprofile --norc -O extglob -c "  # DKMS evals its make command in bash

_WORD = "A-Za-z0-9._+~-"
_NEGATIVE = ("no", "n", "false", "0", "off")


@dataclass(frozen=True)
class DkmsConf:
    """A dkms.conf as read for one kernel: the package and the raw directives."""

    package: Package
    directives: Values  # what bash had in each directive, by array index
    kernel: Kernel


def load_dkms_conf(path: Path, warn: Warn, opts: LoadOptions) -> Package:
    """The package a dkms.conf describes for ``opts.kernel`` (default: the running one)."""
    return read_dkms_conf(path, warn, opts).package


def read_dkms_conf(path: Path, warn: Warn, opts: LoadOptions) -> DkmsConf:
    """Evaluate path (once) for the kernel and interpret it as DKMS does."""
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    kernel = opts.kernel or Kernel.find()
    module, module_version = _tree_names(path, opts.dkms_tree)
    context = {
        "kernelver": kernel.version,
        "arch": kernel.machine,
        "kernel_source_dir": str(kernel.hdrdir),
        "dkms_tree": str(opts.dkms_tree),
        "source_tree": str(opts.source_tree),
        "install_tree": str(opts.install_tree),
        "module": module,
        "module_version": module_version,
    }
    values = evaluate([path], (*DIRECTIVES, *DEPRECATED), label=path, cwd=path.parent, warn=warn,
                      context=context, override_dir=opts.etc_dir, assignments=opts.directives,
                      ids=eval_ids(opts.run_as, opts.dkms_tree), timeout=opts.timeout)
    pkg = _Reader(path, values, kernel, warn).package(
        module or _first(values, "PACKAGE_NAME"),
        module_version or _first(values, "PACKAGE_VERSION"),
        str(opts.dkms_tree), distribution(opts.os_root))
    return DkmsConf(pkg, values, kernel)


def load_framework(etc_dir: Path, warn: Warn, run_as: Optional[Tuple[int, int]] = None,
                   timeout: float = 30.0, kernelver: str = "") -> Dict[str, str]:
    """DKMS's framework variables from etc_dir/framework.conf and framework.conf.d/*.conf.

    The files are sourced in that order (the .d files sorted), once, the same
    safe way as a dkms.conf; ``kernelver`` is visible to them (DKMS lets
    sign_file and the MOK paths use it).  Returns the FRAMEWORK_VARIABLES they
    set; anything else they set is ignored.
    """
    files = [etc_dir / "framework.conf"]
    confd = etc_dir / "framework.conf.d"
    if confd.is_dir():
        files += sorted(p for p in confd.iterdir() if p.name.endswith(".conf"))
    files = [f for f in files if f.exists()]
    if not files:
        return {}
    values = evaluate(files, FRAMEWORK_VARIABLES, label=files[0], cwd=etc_dir, warn=warn,
                      context={"kernelver": kernelver}, ids=eval_ids(run_as, None),
                      timeout=timeout)
    return {name: vals.get(0, "") for name, vals in values.items()}


def distribution(root: Path = Path("/")) -> str:
    """DKMS's running_distribution, from <root>/etc/os-release (or usr/lib/os-release).

    'ubuntu' for Ubuntu, else ID_LIKE when set ('rhel fedora'), else ID.
    """
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields: Dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().isidentifier():
                try:
                    fields[key.strip()] = " ".join(shlex.split(value, comments=True))
                except ValueError:
                    fields[key.strip()] = value.strip()
        ident = fields.get("ID", "")
        return ident if ident == "ubuntu" else (fields.get("ID_LIKE") or ident or "unknown")
    return "unknown"


def dest_override(distro: str) -> Optional[str]:
    """Where DKMS installs every module on this distribution, whatever dkms.conf says."""
    for prefixes, location in DEST_OVERRIDES:
        if distro.startswith(prefixes):
            return location
    return None


def build_command(make: str, pairs: Sequence[Tuple[str, str]], toolchain: bool) -> str:
    """The build hook for DKMS's make command, as DKMS runs it.

    A leading ``make`` becomes ``make KERNELRELEASE=<kver>`` (DKMS also adds
    ``-j<jobs>``: ckms's jobserver gives make its jobs through MAKEFLAGS, and
    a -j would override it), the kernel's toolchain arguments are appended
    when it has any (``toolchain``: clang or LLD, where DKMS appends CC= and
    LD=; never otherwise, a MAKE may end in a subshell), and bash runs it.  ``pairs``
    (literal, VAR): where the shell expands them, whole-word literals are
    written as ${VAR} (the DKMS build directory as ${PWD}, the kernel source
    dir as ${CKMS_KERNEL_HDRDIR}...), so that the hook reads the same for
    every kernel when it can.
    """
    cmd = substitute(make, pairs)
    if cmd.startswith("make"):
        cmd = "make KERNELRELEASE=${CKMS_KERNEL_VERSION}" + cmd[len("make"):]
    return SHELL + shlex.quote(cmd + (" ${CKMS_MAKE_ARGS}" if toolchain else ""))


def script_hook(kind: str, script: str, *, in_source: bool,
                pairs: Sequence[Tuple[str, str]] = ()) -> str:
    """A hook running a DKMS script directive as run_build_script does.

    The first word is a path relative to the directory (the source for
    post_add and the install hooks, the build copy for the build hooks); the
    words are split on blanks, not otherwise interpreted; a script that is not
    executable is a warning, not a failure.  ``pairs`` (literal, VAR): whole
    words of the value written as ${VAR}, which holds the same text.
    """
    cd = 'cd "$CKMS_SOURCE_DIR" || exit; ' if in_source else ""
    return (f"{cd}run={quote_with('./' + script, pairs)}; "
            'if [ -x "${run%% *}" ]; then exec $run; fi; '
            f'echo "Warning: The {kind} script is not executable." >&2')


def quote_with(value: str, pairs: Sequence[Tuple[str, str]]) -> str:
    """value quoted for the shell, with the whole-word literals of ``pairs`` as "${VAR}"."""
    parts: List[Tuple[bool, str]] = [(False, value)]  # (is a variable, text)
    for literal, var in pairs:
        if not literal:
            continue
        rx = _literal_re(literal)
        split: List[Tuple[bool, str]] = []
        for is_var, text in parts:
            pos = 0
            for m in ([] if is_var else rx.finditer(text)):
                split += [(False, text[pos:m.start()]), (True, var)]
                pos = m.end()
            split.append((is_var, text[pos:]))
        parts = split
    return "".join(f'"${{{text}}}"' if is_var else shlex.quote(text)
                   for is_var, text in parts if is_var or text) or "''"


def substitute(cmd: str, pairs: Sequence[Tuple[str, str]]) -> str:
    """Write each literal as ${VAR} wherever the shell would expand it in cmd.

    Only whole words are replaced (a path not inside a longer path, a version
    not inside a longer version), never inside single quotes; outside double
    quotes the expansion is quoted, so a value with blanks stays one word.
    """
    for literal, var in pairs:
        if not literal:
            continue
        rx = _literal_re(literal)
        states = _quote_states(cmd)
        parts: List[str] = []
        pos = 0
        for m in rx.finditer(cmd):
            state = states[m.start()]
            if state == "'":
                continue
            parts += [cmd[pos:m.start()], f"${{{var}}}" if state == '"' else f'"${{{var}}}"']
            pos = m.end()
        cmd = "".join(parts) + cmd[pos:]
    return cmd


def _literal_re(literal: str) -> re.Pattern[str]:
    """literal as a whole word: not inside a longer path (or version)."""
    before = "/" + _WORD if literal.startswith("/") else _WORD
    return re.compile(rf"(?<![{before}]){re.escape(literal)}(?![{_WORD}])")


def _quote_states(cmd: str) -> List[str]:
    """For each character of a shell word list: '' unquoted, "'" or '"' inside those quotes."""
    states: List[str] = []
    state, escaped = "", False
    for ch in cmd:
        states.append(state)
        if escaped:
            escaped = False
        elif ch == "\\" and state != "'":
            escaped = True
        elif state == "" and ch in "'\"":
            state = ch
        elif ch == state:
            state = ""
    return states


def _tree_names(path: Path, dkms_tree: Path) -> Tuple[str, str]:
    """module and module_version when path is <dkms_tree>/<module>/<version>/source/dkms.conf."""
    src = path.parent
    if src.name == "source" and os.path.abspath(src.parent.parent.parent) == os.path.abspath(dkms_tree):
        return src.parent.parent.name, src.parent.name
    return "", ""


def _first(values: Values, name: str) -> str:
    return values.get(name, {}).get(0, "")


class _Reader:
    """DKMS's read_conf over the values bash gave back."""

    def __init__(self, path: Path, values: Values, kernel: Kernel, warn: Warn) -> None:
        self.path, self.values, self.kernel, self.warn = path, values, kernel, warn

    def array(self, name: str) -> Dict[int, str]:
        return self.values.get(name, {})

    def first(self, name: str) -> str:
        return _first(self.values, name)

    def fail(self, msg: str) -> ConfigError:
        return ConfigError(msg if msg.startswith(str(self.path)) else f"{self.path}: {msg}")

    def records(self) -> List[int]:
        """The module records: the indices set in any of the module directives."""
        return sorted({i for name in MODULE_FAMILY for i in self.array(name)})

    def search(self, name: str, index: int, text: str) -> bool:
        rx = self.array(name)[index]
        try:
            return re.search(rx, text) is not None
        except re.error as exc:
            raise self.fail(f"{name}[{index}]: invalid regular expression {rx!r}: {exc}") from None

    def package(self, module: str, module_version: str, dkms_tree: str, distro: str) -> Package:
        for name, why in DEPRECATED.items():
            if name in self.values:
                self.warn(f"{self.path}: {name} is deprecated and ignored: {why}")
        name, version = self.first("PACKAGE_NAME"), self.first("PACKAGE_VERSION")
        errors = []
        if not name:
            errors.append("No 'PACKAGE_NAME' directive specified.")
        if not version:
            errors.append("No 'PACKAGE_VERSION' directive specified.")
        strip = not self.first("STRIP").startswith(("n", "N"))
        modules = self.modules(name, strip, dest_override(distro), errors)
        if errors:
            raise self.fail("not a valid dkms.conf:\n  " + "\n  ".join(errors))
        modules, exclusive = self.exclusive(modules)
        hdrdir = str(self.kernel.hdrdir)
        builddirs = dict.fromkeys([f"{dkms_tree}/{module}/{module_version}/build",
                                   f"{dkms_tree}/{name}/{version}/build"])
        in_kernel = [(hdrdir, "CKMS_KERNEL_HDRDIR"), (self.kernel.version, "CKMS_KERNEL_VERSION")]
        in_build = [*((d, "PWD") for d in builddirs), *in_kernel]
        make = self.make_command() or f"make -C {hdrdir} M={next(iter(builddirs))}"
        hooks = {"build": build_command(make, in_build, bool(self.kernel.make_args()))}
        for directive, (hook, in_source) in SCRIPT_HOOKS.items():
            if self.first(directive).strip():
                hooks[hook] = script_hook(hook, self.first(directive), in_source=in_source,
                                          pairs=in_kernel if in_source else in_build)
        try:
            return Package(
                name=name, version=version, modules=tuple(modules), definition=self.path,
                make="make", strip=strip, autoinstall=self.autoinstall(), hooks=hooks,
                build_depends=self.build_depends(),
                build_depends_rebuild=self.flag("BUILD_DEPENDS_REBUILD"),
                exclusive=exclusive, patches=self.patches(),
                obsolete_by=self.first("OBSOLETE_BY").strip(),
                no_weak_modules=bool(self.first("NO_WEAK_MODULES")), fmt="dkms.conf")
        except ConfigError as exc:
            raise self.fail(str(exc)) from None

    def modules(self, package: str, strip: bool, override: Optional[str],
                errors: List[str]) -> List[Module]:
        records = self.records()
        if not records:
            errors.append("No 'DEST_MODULE_LOCATION' directive specified.")
        modules = []
        for i in records:
            built = self.array("BUILT_MODULE_NAME").get(i, "") or (package if len(records) == 1 else "")
            dest_name = self.array("DEST_MODULE_NAME").get(i, "") or built
            location = self.array("DEST_MODULE_LOCATION").get(i, "")
            problems = []
            if not built:
                problems.append(f"No 'BUILT_MODULE_NAME' directive specified for record #{i}.")
            for what, value in (("BUILT_MODULE_NAME", built), ("DEST_MODULE_NAME", dest_name)):
                if value.endswith((".o", ".ko")):
                    problems.append(f"'{what}' directive ends in '.o' or '.ko' in record #{i}.")
            if not location:
                problems.append(f"No 'DEST_MODULE_LOCATION' directive specified for record #{i}.")
            elif not location.startswith(DEST_PREFIXES):
                problems.append("Directive 'DEST_MODULE_LOCATION' does not begin with "
                                f"'/kernel', '/updates', or '/extra' in record #{i}.")
            errors += problems
            if problems:
                continue
            mod_strip = self.array("STRIP").get(i, "")
            if mod_strip and not mod_strip.startswith(("n", "N", "y", "Y")):
                self.warn(f"{self.path}: STRIP[{i}]={mod_strip!r} means yes, as with DKMS "
                          "(only a value starting with n means no)")
            own = not mod_strip.startswith(("n", "N")) if mod_strip else strip
            try:
                modules.append(Module(
                    name=built,
                    location=self.array("BUILT_MODULE_LOCATION").get(i, "") or ".",
                    dest=override or location, dest_name=dest_name,
                    strip=None if own == strip else own))
            except ConfigError as exc:
                errors.append(f"record #{i}: {exc}")
        return modules

    def exclusive_at(self, index: int) -> Exclusive:
        def get(name: str) -> str:
            return self.array(name).get(index, "")
        try:
            return Exclusive(kernel=get("BUILD_EXCLUSIVE_KERNEL"),
                             kernel_min=get("BUILD_EXCLUSIVE_KERNEL_MIN").strip(),
                             kernel_max=get("BUILD_EXCLUSIVE_KERNEL_MAX").strip(),
                             arch=get("BUILD_EXCLUSIVE_ARCH"),
                             config=tuple(get("BUILD_EXCLUSIVE_CONFIG").split()))
        except ConfigError as exc:
            raise self.fail(f"{exc}" + (f" (record #{index})" if index else "")) from None

    def exclusive(self, modules: List[Module]) -> Tuple[List[Module], Exclusive]:
        """Package-wide BUILD_EXCLUSIVE_*, or per module when an index above 0 is set.

        Per module, index # applies to module record #; modules not for this
        kernel are dropped; when none is left the package gets the first
        record's restriction, so that building it reports a skip.
        """
        if not any(i > 0 for name in EXCLUSIVE for i in self.array(name)):
            return modules, self.exclusive_at(0)
        records = self.records()
        config = self.kernel.config
        kept = []
        for index, mod in zip(records, modules):
            rule = self.exclusive_at(index)
            if not config:  # as DKMS: BUILD_EXCLUSIVE_CONFIG needs the kernel's .config
                rule = dataclasses.replace(rule, config=())
            if rule.why_not(self.kernel.version, self.kernel.machine, config) is None:
                kept.append(mod)
        if kept:
            return kept, Exclusive()
        return modules, self.exclusive_at(records[0])

    def make_command(self) -> str:
        """MAKE[0] unless MAKE_MATCH[0] says otherwise; the last MAKE[#] whose MAKE_MATCH[#] matches."""
        make, match = self.array("MAKE"), self.array("MAKE_MATCH")
        cmd = "" if match.get(0) else make.get(0, "")
        for i in sorted(make):
            if make[i] and match.get(i) and self.search("MAKE_MATCH", i, self.kernel.version):
                cmd = make[i]
        return cmd

    def patches(self) -> Tuple[str, ...]:
        found = []
        match = self.array("PATCH_MATCH")
        for i, patch in sorted(self.array("PATCH").items()):
            if not patch or (match.get(i) and not self.search("PATCH_MATCH", i, self.kernel.version)):
                continue
            if ".." in patch.split("/") or patch.startswith("/") or "\n" in patch:
                raise self.fail(f"PATCH[{i}] {patch!r} must be a file name under patches/")
            found.append(f"patches/{patch}")
        return tuple(found)

    def autoinstall(self) -> bool:
        value = self.first("AUTOINSTALL")
        if value.strip().lower() in _NEGATIVE:
            self.warn(f"{self.path}: AUTOINSTALL={value!r} means yes: as with DKMS, any "
                      "non-empty AUTOINSTALL does; remove the line to turn it off")
        return bool(value)

    def build_depends(self) -> Tuple[str, ...]:
        names = [word for _, value in sorted(self.array("BUILD_DEPENDS").items())
                 for word in value.split()]
        try:
            return tuple(check_name(n, "BUILD_DEPENDS package name") for n in names)
        except ConfigError as exc:
            raise self.fail(str(exc)) from None

    def flag(self, name: str) -> bool:
        value = self.first(name).strip()
        result = parse_bool(value, f"{self.path}: {name}", allow_shell=False) if value else False
        assert isinstance(result, bool)
        return result
