"""dkms.conf -> Package: real Debian files read as DKMS 3.0.10 reads them, and the shell
evaluation (once, unprivileged, time-limited, exact values) on targeted files.

tests/data/dkms/expected.json holds what DKMS's own read_conf computes for each real
file and kernel (tests/data/dkms/make_expected.py); the real-file tests compare with it
for every kernel whose headers are installed.  The other tests use made-up kernels (a
headers dir holding only a .config) so that they run anywhere.
"""

from __future__ import annotations

import json
import os
import posixpath
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from ckms.errors import ConfigError
from ckms.formats import LoadOptions, load_definition
from ckms.formats.dkms_conf import (
    DEPRECATED,
    DIRECTIVES,
    FRAMEWORK_VARIABLES,
    SHELL,
    DkmsConf,
    distribution,
    load_framework,
    read_dkms_conf,
)
from ckms.kernel import Kernel
from ckms.model import Exclusive
from ckms.run import DEFAULT_PATH
from tests.unit.test_docs import first_bold, literal_blocks, section, source, term_lines

DATA = Path(__file__).resolve().parent.parent / "data" / "dkms"
EXPECTED = json.loads((DATA / "expected.json").read_text())
ROOT = os.geteuid() == 0
MINIMAL = ("PACKAGE_NAME=foo\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=foo\n"
           "DEST_MODULE_LOCATION[0]=/extra\n")
KVER = "6.1.0-99-amd64"


# ----- fixtures and helpers ------------------------------------------------------

def make_world() -> Iterator[Path]:
    """A directory the evaluating user (nobody, when the tests run as root) can read."""
    path = Path(tempfile.mkdtemp(prefix="ckms-test-dkms-"))
    path.chmod(0o755)
    for name, text in (("debian", "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n"),
                       ("plain", "ID=plainos\n")):
        (path / "os" / name / "etc").mkdir(parents=True)
        (path / "os" / name / "etc" / "os-release").write_text(text)
    yield path
    shutil.rmtree(path)


world = pytest.fixture(name="world")(make_world)


def fake_kernel(world: Path, version: str = KVER, config: str = "CONFIG_MODULES=y\n",
                machine: str = "x86_64") -> Kernel:
    hdr = world / "kernels" / version / "build"
    hdr.mkdir(parents=True, exist_ok=True)
    (hdr / ".config").write_text(config)
    return Kernel(version=version, machine=machine, hdrdir=hdr, moddir=hdr.parent)


def options(world: Path, kernel: Optional[Kernel] = None, distro: str = "debian",
            **kw: object) -> LoadOptions:
    return LoadOptions(kernel=kernel or fake_kernel(world), dkms_tree=world / "dkmstree",
                       etc_dir=world / "etc", os_root=world / "os" / distro,
                       **kw)  # type: ignore[arg-type]


def write(world: Path, text: str | bytes, name: str = "src") -> Path:
    src = world / name
    src.mkdir(exist_ok=True)
    path = src / "dkms.conf"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def read(world: Path, text: str | bytes, kernel: Optional[Kernel] = None,
         **kw: object) -> Tuple[DkmsConf, List[str]]:
    warnings: List[str] = []
    conf = read_dkms_conf(write(world, text), warnings.append, options(world, kernel, **kw))
    return conf, warnings


def error_of(world: Path, text: str, **kw: object) -> str:
    path = write(world, text)
    with pytest.raises(ConfigError) as exc:
        read_dkms_conf(path, lambda msg: None, options(world, **kw))
    msg = str(exc.value)
    assert msg.startswith(str(path)), msg  # every error names the file
    return msg


def make_argv(hook: str, pwd: str, kver: str, hdrdir: str) -> List[str]:
    """The words of the build hook's command, with ckms's variables filled in."""
    assert hook.startswith(SHELL), hook
    (cmd,) = shlex.split(hook[len(SHELL):])
    for var, value in (("CKMS_KERNEL_VERSION", kver),
                       ("CKMS_KERNEL_HDRDIR", hdrdir), ("PWD", pwd), ("CKMS_MAKE_ARGS", "")):
        cmd = cmd.replace(f"${{{var}}}", value)
    return shlex.split(cmd)


def run_hook(cmd: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": DEFAULT_PATH, **env})


def nobody() -> Tuple[int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


# ----- the real files, as DKMS reads them ------------------------------------------

def test_sources_list_every_file() -> None:
    listed = [line.split()[0] for line in (DATA / "SOURCES").read_text().splitlines()
              if line and not line.startswith("#")]
    assert sorted(listed) == sorted(p.parent.name for p in DATA.glob("*/dkms.conf"))
    assert sorted(EXPECTED) == sorted(listed)
    for required in ("v4l2loopback-dkms", "acpi-call-dkms", "falcosecurity-scap-dkms",
                     "tp-smapi-dkms", "xtables-addons-dkms", "dahdi-dkms",
                     "openafs-modules-dkms", "lttng-modules-dkms"):
        assert required in listed


@pytest.mark.parametrize("pkgdir,kver", [(p, k) for p in sorted(EXPECTED) for k in EXPECTED[p]])
def test_real_file_reads_as_dkms_does(world: Path, pkgdir: str, kver: str) -> None:
    if not (Path("/lib/modules") / kver / "build" / ".config").is_file():
        pytest.skip(f"no headers for {kver}")
    want = EXPECTED[pkgdir][kver]
    kernel = Kernel.find(kver)
    path = DATA / pkgdir / "dkms.conf"
    warnings: List[str] = []
    conf = read_dkms_conf(path, warnings.append,
                          LoadOptions(kernel=kernel, os_root=world / "os" / "debian"))
    pkg = conf.package
    assert (pkg.name, pkg.version, pkg.fmt) == (want["name"], want["version"], "dkms.conf")
    got = [[m.name, m.location, m.dest, m.dest_name, pkg.strip if m.strip is None else m.strip]
           for m in pkg.modules]
    assert got == [[name, posixpath.normpath(loc or "."), posixpath.normpath(dest.lstrip("/")),
                    dest_name, strip] for name, loc, dest, dest_name, strip in want["modules"]]
    excluded = pkg.exclusive.why_not(kver, kernel.machine, kernel.config) is not None
    assert excluded == want["excluded"]
    # the build command is DKMS's, once ckms's variables hold what DKMS's held
    dkms_make = want["make"]
    if dkms_make.startswith("make"):  # DKMS also adds -jN: ckms's jobserver gives the jobs
        dkms_make = f"make KERNELRELEASE={kver}" + dkms_make[4:]
    builddir = f"/var/lib/dkms/{pkg.name}/{pkg.version}/build"
    assert make_argv(pkg.hooks["build"], builddir, kver, str(kernel.hdrdir)) == shlex.split(dkms_make)
    assert all(w.startswith(str(path)) for w in warnings), warnings


def test_real_shell_idioms(world: Path) -> None:
    # iptables-netflow: pushd `dirname $BASH_SOURCE` (prints on stdout), STRIP no, PRE_BUILD
    conf, _ = read(world, (DATA / "iptables-netflow-dkms" / "dkms.conf").read_bytes())
    pkg = conf.package
    assert (pkg.version, pkg.strip) == ("2.6", False)
    assert pkg.hooks["pre_build"].startswith("run='././configure --from-dkms-conf='\"${CKMS_KERNEL_HDRDIR}\"")
    # openafs: backticks and case on $kernelver
    conf, _ = read(world, (DATA / "openafs-modules-dkms" / "dkms.conf").read_bytes())
    assert "--with-afs-sysname=amd64_linux26" in conf.package.hooks["build"]
    other = fake_kernel(world, "6.1.0-99-686-pae")
    conf, _ = read(world, (DATA / "openafs-modules-dkms" / "dkms.conf").read_bytes(), other)
    assert "--with-afs-sysname=i386_linux26" in conf.package.hooks["build"]
    # openafs excludes PREEMPT_RT kernels
    rt = fake_kernel(world, "6.1.0-99-rt-amd64", "CONFIG_PREEMPT_RT=y\n")
    conf, _ = read(world, (DATA / "openafs-modules-dkms" / "dkms.conf").read_bytes(), rt)
    assert conf.package.exclusive.why_not(rt.version, "x86_64", rt.config) is not None


@pytest.mark.parametrize("pkgdir,kver,config,why", [
    ("acpi-call-dkms", KVER, "CONFIG_MODULES=y\n", "CONFIG_ACPI unset"),
    ("acpi-call-dkms", KVER, "CONFIG_ACPI=y\n", None),
    ("v4l2loopback-dkms", KVER, "CONFIG_VIDEO_V4L2=m\n", "does not match 'REQUIRES CONFIG_VIDEO_DEV'"),
    ("v4l2loopback-dkms", KVER, "CONFIG_VIDEO_DEV=m\n", None),
    ("v4l2loopback-dkms", "5.10.0-9-amd64", "CONFIG_VIDEO_V4L2=m\n", None),
    ("dahdi-dkms", "5.4.0-1-amd64", "CONFIG_PCI=y\nCONFIG_USB=y\n", "does not match"),
    ("dahdi-dkms", KVER, "CONFIG_PCI=y\n", "CONFIG_USB unset"),
    ("dm-writeboost-dkms", "3.2.0-4-amd64", "", "older than 3.9"),
    ("ddcci-dkms", KVER, "CONFIG_BACKLIGHT_CLASS_DEVICE=y\n", "'^do_not_build$'"),
    ("ddcci-dkms", KVER, "CONFIG_BACKLIGHT_CLASS_DEVICE=y\nCONFIG_I2C=y\n", None),
])
def test_real_build_exclusive(world: Path, pkgdir: str, kver: str, config: str,
                              why: Optional[str]) -> None:
    kernel = fake_kernel(world, kver, config)
    conf, warnings = read(world, (DATA / pkgdir / "dkms.conf").read_bytes(), kernel)
    reason = conf.package.exclusive.why_not(kver, kernel.machine, kernel.config)
    assert (reason is None) == (why is None), reason
    assert why is None or why in (reason or "")
    if pkgdir == "ddcci-dkms" and why:  # what the file prints on stderr is a warning
        assert any(w.endswith("I2C disabled in this kernel, not building module.") for w in warnings)


def test_real_counters_follow_the_kernel_config(world: Path) -> None:
    text = (DATA / "lttng-modules-dkms" / "dkms.conf").read_bytes()
    bare, _ = read(world, text, fake_kernel(world, config=""))
    full, _ = read(world, text, fake_kernel(world, "5.10.0-9-amd64",
                                            "CONFIG_KPROBES=y\nCONFIG_NET=y\nCONFIG_64BIT=y\n"))
    names = {m.name for m in bare.package.modules}
    more = {m.name for m in full.package.modules}
    assert "lttng-kprobes" not in names and "lttng-probe-kmem" not in names
    assert {"lttng-kprobes", "lttng-probe-net", "lttng-probe-kmem",
            "lttng-counter-client-percpu-64-modular"} <= more
    assert len(more) == len(names) + 8  # kprobes, kmem, 64-modular, 5 net probes


# ----- shell: what real files do ------------------------------------------------------

def test_command_substitution_backticks_case_counters(world: Path) -> None:
    conf, warnings = read(world, """
PACKAGE_NAME="$(echo foo)"
PACKAGE_VERSION=`echo 1.$((2 + 3))`
i=0
for m in a b c; do
    BUILT_MODULE_NAME[$i]=mod_$m
    DEST_MODULE_LOCATION[$i]="/extra/$m"
    i=$((i+1))
done
case "$kernelver" in
  6.1.*) BUILT_MODULE_LOCATION[1]="sub/dir/" ;;
  *)     BUILT_MODULE_LOCATION[1]="other" ;;
esac
""")
    pkg = conf.package
    assert (pkg.name, pkg.version) == ("foo", "1.5")
    assert [(m.name, m.location, m.dest) for m in pkg.modules] == [
        ("mod_a", ".", "updates/dkms"), ("mod_b", "sub/dir", "updates/dkms"),
        ("mod_c", ".", "updates/dkms")]
    assert warnings == []


def test_kernel_config_sourced(world: Path) -> None:
    text = MINIMAL + """
if [ -f $kernel_source_dir/.config ]; then
    . $kernel_source_dir/.config
    [ "$CONFIG_FOO" = y ] && AUTOINSTALL=yes
fi
"""
    on, _ = read(world, text, fake_kernel(world, config="CONFIG_FOO=y\n"))
    off, _ = read(world, text, fake_kernel(world, "6.1.0-98-amd64", config="# CONFIG_FOO is not set\n"))
    assert on.package.autoinstall and not off.package.autoinstall


def test_dkms_variables(world: Path) -> None:
    conf, _ = read(world, MINIMAL + 'OBSOLETE_BY="$kernelver|$arch|$kernel_source_dir|'
                   '$dkms_tree|$source_tree|$install_tree|$module|$module_version|$(pwd)|${HOME}|$PATH"\n'
                   'env | grep -q kernelver && OBSOLETE_BY=exported\n')
    kernel = conf.kernel
    assert conf.package.obsolete_by.split("|") == [
        KVER, "x86_64", str(kernel.hdrdir), str(world / "dkmstree"), "/usr/src", "/lib/modules",
        "", "", str(world / "src"), "/", DEFAULT_PATH]


def test_values_read_back_exactly(world: Path) -> None:
    text = MINIMAL + r"""
PRE_BUILD="pre.sh 'single' \"double\" \$dollar \\backslash"
POST_BUILD="line one
line two"
BUILD_EXCLUSIVE_KERNEL=' lead and trail '
MAKE[0]="make CFLAGS=\"-DX='y z'\""
"""
    conf, _ = read(world, text)
    raw = conf.directives
    assert raw["PRE_BUILD"] == {0: "pre.sh 'single' \"double\" $dollar \\backslash"}
    assert raw["POST_BUILD"] == {0: "line one\nline two"}
    assert raw["BUILD_EXCLUSIVE_KERNEL"] == {0: " lead and trail "}
    argv = make_argv(conf.package.hooks["build"], "/b", KVER, "/h")
    assert argv == ["make", f"KERNELRELEASE={KVER}", "CFLAGS=-DX='y z'"]


def test_sparse_arrays(world: Path) -> None:
    conf, _ = read(world, """
PACKAGE_NAME=foo
PACKAGE_VERSION=1
BUILT_MODULE_NAME[0]=zero
DEST_MODULE_LOCATION[0]=/extra
BUILT_MODULE_NAME[7]=seven
DEST_MODULE_LOCATION[7]=/extra
STRIP[7]=no
MAKE[3]="make three"
MAKE_MATCH[3]=.
""")
    assert conf.directives["BUILT_MODULE_NAME"] == {0: "zero", 7: "seven"}
    assert [(m.name, m.strip) for m in conf.package.modules] == [("zero", None), ("seven", False)]
    assert make_argv(conf.package.hooks["build"], "/b", KVER, "/h")[-1] == "three"


def test_crlf_line_ends(world: Path) -> None:
    text = ("PACKAGE_NAME=\"foo\"\r\nPACKAGE_VERSION=1.0\r\nif [ -n \"$kernelver\" ]; then\r\n"
            "  BUILT_MODULE_NAME[0]=foo\r\nfi\r\nDEST_MODULE_LOCATION[0]=/extra\r\nAUTOINSTALL=yes")
    conf, warnings = read(world, text)
    assert (conf.package.name, conf.package.version, conf.package.autoinstall) == ("foo", "1.0", True)
    assert [m.name for m in conf.package.modules] == ["foo"]
    assert not any("\r" in v for vals in conf.directives.values() for v in vals.values())
    assert warnings == []


def test_output_of_the_file_is_ignored(world: Path) -> None:
    conf, warnings = read(world, "echo PACKAGE_NAME=evil\nprintf 'x\\0y\\0z\\0'\n" + MINIMAL
                          + "echo 'a warning' >&2\nls /nonexistent-ckms\n")
    assert conf.package.name == "foo"
    path = world / "src" / "dkms.conf"
    assert warnings[0] == f"{path}: a warning"
    assert "nonexistent-ckms" in warnings[1] and warnings[1].startswith(str(path))


def test_extglob_as_in_dkms(world: Path) -> None:
    conf, _ = read(world, MINIMAL + 'v=yes\n[[ $v == @(y|yes) ]] && STRIP[0]="$(echo -n no)"\n')
    assert conf.package.strip is False


def test_declare_and_functions_in_the_file(world: Path) -> None:
    conf, _ = read(world, "declare -a BUILT_MODULE_NAME=(a b)\n"
                   "set_dest() { DEST_MODULE_LOCATION[$1]=/extra; }\n"
                   "set_dest 0; set_dest 1\ndeclare PACKAGE_NAME=foo PACKAGE_VERSION=2\n")
    assert [m.name for m in conf.package.modules] == ["a", "b"]


# ----- shell: failures -------------------------------------------------------------------

def test_syntax_error(world: Path) -> None:
    msg = error_of(world, MINIMAL + "if [ -f x ]; then\n  AUTOINSTALL=yes\n")
    assert "syntax error" in msg and "unexpected end of file" in msg


def test_syntax_error_in_crlf_file(world: Path) -> None:
    msg = error_of(world, "PACKAGE_NAME=foo\r\nfoo(\r\n")
    assert "syntax error" in msg


def test_endless_loop_is_killed(world: Path) -> None:
    start = time.monotonic()
    msg = error_of(world, MINIMAL + "while :; do :; done\n", timeout=0.5)
    assert "longer than 0.5 s" in msg and "killed" in msg
    assert time.monotonic() - start < 5


def test_background_job_does_not_hold_the_read(world: Path) -> None:
    marker = f"ckms-test-sleeper-{os.getpid()}"
    start = time.monotonic()
    conf, _ = read(world, MINIMAL + f"(exec -a {marker} sleep 60) &\n", timeout=10)
    assert conf.package.name == "foo" and time.monotonic() - start < 5
    time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


def test_exit_in_the_file(world: Path) -> None:
    assert "exit status 3" in error_of(world, MINIMAL + "exit 3\n")
    assert "exited before its end" in error_of(world, MINIMAL + "exit 0\n")


def test_associative_array_refused(world: Path) -> None:
    msg = error_of(world, MINIMAL + "unset BUILT_MODULE_NAME; declare -A BUILT_MODULE_NAME=([x]=foo)\n")
    assert "associative" in msg


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        read_dkms_conf(Path("/nonexistent/dkms.conf"), lambda m: None, LoadOptions())


# ----- evaluated once, never as root ----------------------------------------------------

def test_evaluated_exactly_once(world: Path) -> None:
    log = world / "log"
    log.mkdir(mode=0o777)
    log.chmod(0o777)
    (world / "etc").mkdir()
    (world / "etc" / "foo.conf").write_text(f"echo override >> {log}/count\n")
    conf, _ = read(world, f"echo conf >> {log}/count\n" + MINIMAL
                   + f'PACKAGE_VERSION="1.$(echo subst >> {log}/count; echo 0)"\n',
                   directives=(("AUTOINSTALL", "yes"),))
    assert (log / "count").read_text().split() == ["conf", "subst", "override"]
    assert conf.package.version == "1.0" and conf.package.autoinstall


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_never_evaluated_as_root(world: Path) -> None:
    locked = world / "rootonly"
    locked.mkdir(mode=0o755)
    text = MINIMAL + (f'PACKAGE_VERSION="1.$(id -u).$(id -g).$(id -G | wc -w)"\n'
                      f"touch {locked}/evil 2>/dev/null\n")
    uid, gid = nobody()
    conf, _ = read(world, text)  # the tree (missing here) is not owned by a user: nobody
    assert conf.package.version == f"1.{uid}.{gid}.1"
    conf, _ = read(world, text, run_as=(0, 0))  # asked for root: still not
    assert conf.package.version == f"1.{uid}.{gid}.1"
    conf, _ = read(world, text, run_as=(4242, 4343))
    assert conf.package.version == "1.4242.4343.1"
    tree = world / "dkmstree"
    tree.mkdir()
    os.chown(tree, 4321, 4322)
    conf, _ = read(world, text)  # the owner of the tree
    assert conf.package.version == "1.4321.4322.1"
    assert not (locked / "evil").exists()


@pytest.mark.skipif(ROOT, reason="runs as the test user only when not root")
def test_evaluated_as_ourselves_when_not_root(world: Path) -> None:
    conf, _ = read(world, MINIMAL + 'PACKAGE_VERSION="1.$(id -u)"\n', run_as=(4242, 4242))
    assert conf.package.version == f"1.{os.getuid()}"


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_unreadable_file(world: Path) -> None:
    path = write(world, MINIMAL)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="cannot read it as uid"):
        read_dkms_conf(path, lambda m: None, options(world))


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_read_where_the_source_link_leads(world: Path) -> None:
    """A tree the evaluating user cannot enter (a root-only dir): the link's target is read."""
    write(world, MINIMAL)
    tree = world / "private"
    tree.mkdir(mode=0o700)
    (tree / "source").symlink_to(world / "src")
    conf = read_dkms_conf(tree / "source" / "dkms.conf", lambda m: None, options(world))
    assert conf.package.name == "foo"
    (tree / "dkms.conf").write_text(MINIMAL)  # really out of reach: said so, not "no PACKAGE_NAME"
    with pytest.raises(ConfigError, match="cannot read it as uid"):
        read_dkms_conf(tree / "dkms.conf", lambda m: None, options(world))


# ----- override files and --directive -------------------------------------------------

def test_override_files(world: Path) -> None:
    etc = world / "etc"
    etc.mkdir()
    for name, text in (("foo.conf", "STRIP[0]=no\nBUILD_DEPENDS=a\n"),
                       ("foo-1.0.conf", "BUILD_DEPENDS+=(b)\nDEST_MODULE_LOCATION[0]=/kernel/x\n"),
                       (f"foo-1.0-{KVER}.conf", "BUILD_DEPENDS+=(c)\r\n"),
                       (f"foo-1.0-{KVER}-x86_64.conf", "BUILD_DEPENDS+=(d)\n"),
                       (f"foo--{KVER}.conf", "BUILD_DEPENDS+=(e)\n"),
                       (f"foo--{KVER}-x86_64.conf", 'BUILD_DEPENDS+=("$module$module_version")\n'),
                       ("foo-2.0.conf", "BUILD_DEPENDS+=(wrong)\n"),
                       ("bar.conf", "BUILD_DEPENDS+=(wrong)\n")):
        (etc / name).write_text(text)
    conf, _ = read(world, MINIMAL, distro="plain")
    pkg = conf.package
    assert pkg.build_depends == ("a", "b", "c", "d", "e", "foo1.0")
    assert (pkg.strip, pkg.modules[0].dest) == (False, "kernel/x")


def test_override_files_use_the_tree_names(world: Path) -> None:
    etc = world / "etc"
    etc.mkdir()
    (etc / "tree-name.conf").write_text("AUTOINSTALL=yes\n")
    (etc / "foo.conf").write_text("OBSOLETE_BY=9.9\n")
    source = world / "dkmstree" / "tree-name" / "7.0" / "source"
    source.mkdir(parents=True)
    (source / "dkms.conf").write_text(MINIMAL + 'BUILD_DEPENDS="$module-$module_version"\n')
    pkg = load_definition(source / "dkms.conf", lambda m: None, options(world))
    assert (pkg.autoinstall, pkg.obsolete_by, pkg.build_depends) == (True, "", ("tree-name-7.0",))


def test_override_file_syntax_error(world: Path) -> None:
    (world / "etc").mkdir()
    (world / "etc" / "foo.conf").write_text("fi\n")
    msg = error_of(world, MINIMAL)
    assert "syntax error" in msg and str(world / "etc" / "foo.conf") in msg


def test_directives(world: Path) -> None:
    conf, _ = read(world, MINIMAL, directives=(("PACKAGE_VERSION", "2.0"), ("STRIP[0]", "no"),
                                               ("MAKE[0]", "make 'quoted' $x")))
    assert (conf.package.version, conf.package.strip) == ("2.0", False)
    assert conf.directives["MAKE"] == {0: "make 'quoted' $x"}
    with pytest.raises(ConfigError, match="cannot set 'A B'"):
        read(world, MINIMAL, directives=(("A B", "x"),))


# ----- the directives, as DKMS interprets them ------------------------------------------

@pytest.mark.parametrize("clang", [False, True])
def test_default_build_command_runs_make_as_dkms(world: Path, clang: bool) -> None:
    """The hook, run by /bin/sh as ckms runs hooks, calls make with DKMS's arguments.

    Toolchain arguments only for a kernel built with clang/LLD, as DKMS adds CC=/LD=.
    """
    config = "CONFIG_MODULES=y\nCONFIG_CC_IS_CLANG=y\nCONFIG_LD_IS_LLD=y\n" if clang else "CONFIG_MODULES=y\n"
    conf, _ = read(world, MINIMAL, fake_kernel(world, config=config))
    bindir, build, hdr = world / "bin", world / "build dir", world / "hdr dir"
    for d in (bindir, build, hdr):
        d.mkdir()
    (bindir / "make").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (bindir / "make").chmod(0o755)
    proc = run_hook(conf.package.hooks["build"], build, PATH=f"{bindir}:{DEFAULT_PATH}",
                    CKMS_KERNEL_VERSION=KVER, CKMS_KERNEL_HDRDIR=str(hdr),
                    CKMS_MAKE_ARGS="LLVM=1 LD=ld.lld")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"KERNELRELEASE={KVER}", "-C", str(hdr), f"M={build}",
                                        *(["LLVM=1", "LD=ld.lld"] if clang else [])]


@pytest.mark.parametrize("make,kver,want", [
    ("MAKE[0]='make a'\nMAKE[1]='make b'\nMAKE_MATCH[1]='^6\\.1\\.'\nMAKE[2]='make c'\n"
     "MAKE_MATCH[2]='^6\\.'", KVER, "c"),
    ("MAKE[0]='make a'\nMAKE[1]='make b'\nMAKE_MATCH[1]='^6\\.1\\.'\nMAKE[2]='make c'\n"
     "MAKE_MATCH[2]='^6\\.'", "5.10.0-9-amd64", "a"),
    ("MAKE[0]='make a'\nMAKE_MATCH[0]='^5'", KVER, "default"),
    ("MAKE[0]='make a'\nMAKE_MATCH[0]='^6'", KVER, "a"),
    ("MAKE[1]='make b'", KVER, "default"),  # no MAKE_MATCH[1]: ignored, as in DKMS
])
def test_make_match(world: Path, make: str, kver: str, want: str) -> None:
    kernel = fake_kernel(world, kver)
    conf, _ = read(world, MINIMAL + make + "\n", kernel)
    argv = make_argv(conf.package.hooks["build"], "/b", kver, "/h")
    assert argv[2:] == (["-C", "/h", "M=/b"] if want == "default" else [want])


def test_make_rewrite_only_for_a_leading_make(world: Path) -> None:
    for make, want in (("'make' x", ["make", "x"]),
                       ("KDIR=$kernel_source_dir make y", ["KDIR=/h", "make", "y"]),
                       ("makefoo z", ["make", f"KERNELRELEASE={KVER}foo", "z"])):
        conf, _ = read(world, MINIMAL + f'MAKE="{make}"\n')
        assert make_argv(conf.package.hooks["build"], "/b", KVER, "/h") == want


def test_build_dir_and_kernel_written_as_variables(world: Path) -> None:
    conf, _ = read(world, MINIMAL + "MAKE=\"make -C $kernel_source_dir M=$dkms_tree/foo/1.0/build "
                   "KVER=$kernelver X=$dkms_tree/foo/1.0/buildx '$kernelver' "
                   "Y='$kernel_source_dir' Z=/usr/src/linux-headers-$kernelver\"\n")
    hook = conf.package.hooks["build"]
    tree, hdr = world / "dkmstree", conf.kernel.hdrdir
    assert shlex.split(hook[len(SHELL):])[0] == (
        'make KERNELRELEASE=${CKMS_KERNEL_VERSION} -C "${CKMS_KERNEL_HDRDIR}" '
        f'M="${{PWD}}" KVER="${{CKMS_KERNEL_VERSION}}" X={tree}/foo/1.0/buildx \'{KVER}\' '
        f"Y='{hdr}' Z=/usr/src/linux-headers-{KVER}")


def test_script_hooks(world: Path) -> None:
    src, build = world / "src", world / "build"
    conf, _ = read(world, MINIMAL + """
PRE_BUILD="scripts/pre.sh a 'b c' \\$HOME"
POST_BUILD="missing.sh"
POST_ADD="scripts/post.sh $kernel_source_dir"
PRE_INSTALL="scripts/noexec.sh"
POST_INSTALL="/scripts/post.sh"
POST_REMOVE="   "
""")
    hooks = conf.package.hooks
    assert set(hooks) == {"build", "pre_build", "post_build", "post_add", "pre_install",
                          "post_install"}
    for d in (src / "scripts", build / "scripts"):
        d.mkdir(parents=True)
        (d / "pre.sh").write_text('#!/bin/sh\necho "$(pwd)|$0|$*"\n')
        (d / "post.sh").write_text('#!/bin/sh\necho "$(pwd)|$0|$*"\n')
        (d / "pre.sh").chmod(0o755)
        (d / "post.sh").chmod(0o755)
        (d / "noexec.sh").write_text("#!/bin/sh\nexit 1\n")
    env = {"CKMS_SOURCE_DIR": str(src), "CKMS_KERNEL_HDRDIR": "/hdr"}
    # words split on blanks, nothing else: quotes and $ are passed as they are
    out = run_hook(hooks["pre_build"], build, **env)
    assert out.stdout == f"{build}|./scripts/pre.sh|a 'b c' $HOME\n"
    # install-time hooks run in the source directory, wherever they are started
    out = run_hook(hooks["post_add"], world, **env)
    assert out.stdout == f"{src}|./scripts/post.sh|/hdr\n"
    out = run_hook(hooks["post_install"], world, **env)  # a leading / is still relative
    assert out.stdout == f"{src}|.//scripts/post.sh|\n"
    for hook, name in (("pre_install", "pre_install"), ("post_build", "post_build")):
        out = run_hook(hooks[hook], build, **env)
        assert (out.returncode, out.stdout) == (0, "")
        assert out.stderr == f"Warning: The {name} script is not executable.\n"


def test_module_records(world: Path) -> None:
    conf, _ = read(world, """
PACKAGE_NAME=pkg
PACKAGE_VERSION=1
BUILT_MODULE_NAME[0]=a
BUILT_MODULE_LOCATION[0]=src/a/
DEST_MODULE_LOCATION[0]=/kernel/drivers/misc
DEST_MODULE_NAME[0]=a_renamed
STRIP[0]=no
BUILT_MODULE_NAME[1]=b
DEST_MODULE_LOCATION[1]=/updates
BUILT_MODULE_NAME[2]=c
DEST_MODULE_LOCATION[2]=/extra
STRIP[2]=YES
BUILT_MODULE_NAME[3]=d
DEST_MODULE_LOCATION[3]=/extra/
STRIP[3]=false
""", distro="plain")
    pkg = conf.package
    assert pkg.strip is False
    assert [(m.name, m.location, m.dest, m.dest_name, m.strip) for m in pkg.modules] == [
        ("a", "src/a", "kernel/drivers/misc", "a_renamed", None),
        ("b", ".", "updates", "b", None),
        ("c", ".", "extra", "c", True),
        ("d", ".", "extra", "d", True)]
    assert pkg.modules[0].dest_relpath == "kernel/drivers/misc/a_renamed.ko"


def test_single_record_defaults_to_package_name(world: Path) -> None:
    conf, _ = read(world, "PACKAGE_NAME=solo\nPACKAGE_VERSION=1\nDEST_MODULE_LOCATION=/extra\n")
    assert [m.name for m in conf.package.modules] == ["solo"]


def test_strip_warning(world: Path) -> None:
    _, warnings = read(world, MINIMAL + "STRIP[0]=false\n")
    assert any("STRIP[0]='false' means yes" in w for w in warnings)


@pytest.mark.parametrize("os_release,where,dest", [
    ("ID=debian", "etc", "updates/dkms"),
    ("ID=ubuntu\nID_LIKE=debian", "etc", "updates/dkms"),
    ("ID=linuxmint\nID_LIKE=\"ubuntu debian\"", "etc", "updates/dkms"),
    ("ID=arch", "usr/lib", "updates/dkms"),
    ("ID=manjaro\nID_LIKE=arch", "etc", "updates/dkms"),
    ("ID=fedora", "etc", "extra"),
    ("ID=\"centos\"\nID_LIKE=\"rhel fedora\"", "etc", "extra"),
    ("ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"", "etc", "updates"),
    ("ID=alpine", "etc", "kernel/drivers/x"),
    ("", "", "kernel/drivers/x"),
])
def test_dest_override_by_distribution(world: Path, os_release: str, where: str, dest: str) -> None:
    root = world / "os" / "case"
    if where:
        (root / where).mkdir(parents=True)
        (root / where / "os-release").write_text(os_release + "\n")
    conf, _ = read(world, MINIMAL.replace("/extra", "/kernel/drivers/x"), distro="case")
    assert conf.package.modules[0].dest == dest


def test_distribution() -> None:
    assert distribution(Path("/nonexistent")) == "unknown"
    if Path("/etc/os-release").is_file() and "ID=debian" in Path("/etc/os-release").read_text():
        assert distribution() == "debian"


def test_validation_messages_as_dkms(world: Path) -> None:
    msg = error_of(world, """
BUILT_MODULE_NAME[0]=a
BUILT_MODULE_NAME[1]=b.ko
DEST_MODULE_NAME[1]=c.o
DEST_MODULE_LOCATION[1]=/lib/x
DEST_MODULE_LOCATION[2]=/extra
""")
    for line in ("No 'PACKAGE_NAME' directive specified.",
                 "No 'PACKAGE_VERSION' directive specified.",
                 "No 'DEST_MODULE_LOCATION' directive specified for record #0.",
                 "'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #1.",
                 "'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #1.",
                 "Directive 'DEST_MODULE_LOCATION' does not begin with '/kernel', '/updates', "
                 "or '/extra' in record #1.",
                 "No 'BUILT_MODULE_NAME' directive specified for record #2."):
        assert f"\n  {line}" in msg, msg
    assert "No 'DEST_MODULE_LOCATION' directive specified." in error_of(
        world, "PACKAGE_NAME=a\nPACKAGE_VERSION=1\n")


@pytest.mark.parametrize("text,words", [
    (MINIMAL + "BUILT_MODULE_LOCATION[0]=../../etc\n", "escapes"),
    (MINIMAL + "BUILT_MODULE_NAME[0]=a/b\n", "invalid kernel module name"),
    (MINIMAL + "DEST_MODULE_LOCATION[0]=/extra/../../..\n", None),
    (MINIMAL + "PACKAGE_NAME=../x\n", "invalid package name"),
    (MINIMAL + "PACKAGE_VERSION='1 0'\n", "invalid version"),
    (MINIMAL + "BUILD_DEPENDS='ok ../bad'\n", "invalid BUILD_DEPENDS package name"),
    (MINIMAL + "BUILD_EXCLUSIVE_KERNEL='('\n", "invalid regular expression"),
    (MINIMAL + "MAKE[1]=x\nMAKE_MATCH[1]='['\n", "MAKE_MATCH[1]: invalid regular expression"),
    (MINIMAL + "PATCH[0]=../x.patch\n", "must be a file name under patches/"),
    (MINIMAL + "BUILD_DEPENDS_REBUILD=maybe\n", "invalid boolean"),
])
def test_hostile_or_bad_values(world: Path, text: str, words: Optional[str]) -> None:
    if words is None:  # the distribution override hides it on Debian; elsewhere it is refused
        assert read(world, text)[0].package.modules[0].dest == "updates/dkms"
        assert "escapes" in error_of(world, text, distro="plain")
    else:
        assert words in error_of(world, text)


def test_patches(world: Path) -> None:
    conf, _ = read(world, MINIMAL + "PATCH[0]=a.patch\nPATCH[1]=b.patch\nPATCH_MATCH[1]='^5\\.'\n"
                   "PATCH[2]=sub/c.patch\nPATCH_MATCH[2]='^6\\.1'\n")
    assert conf.package.patches == ("patches/a.patch", "patches/sub/c.patch")


def test_autoinstall_and_flags(world: Path) -> None:
    for value, want in (("yes", True), ("YES", True), ("", False), ("no", True), ("1", True)):
        conf, warnings = read(world, MINIMAL + f"AUTOINSTALL='{value}'\n")
        assert conf.package.autoinstall is want
        assert any("means yes" in w for w in warnings) == (value == "no")
    conf, _ = read(world, MINIMAL + "BUILD_DEPENDS=('a b' c)\nBUILD_DEPENDS_REBUILD=yes\n"
                   "NO_WEAK_MODULES=yes\nOBSOLETE_BY=' 5.4 '\n")
    pkg = conf.package
    assert (pkg.build_depends, pkg.build_depends_rebuild, pkg.no_weak_modules, pkg.obsolete_by) == (
        ("a", "b", "c"), True, True, "5.4")
    conf, _ = read(world, MINIMAL)
    assert (conf.package.build_depends_rebuild, conf.package.no_weak_modules) == (False, False)


def test_build_exclusive(world: Path) -> None:
    conf, _ = read(world, MINIMAL + "BUILD_EXCLUSIVE_KERNEL='^6\\.'\nBUILD_EXCLUSIVE_KERNEL_MIN=6.1\n"
                   "BUILD_EXCLUSIVE_KERNEL_MAX=6.10\nBUILD_EXCLUSIVE_ARCH='x86_64|aarch64'\n"
                   "BUILD_EXCLUSIVE_CONFIG='CONFIG_A !CONFIG_B'\n")
    ex = conf.package.exclusive
    assert ex == Exclusive(kernel="^6\\.", kernel_min="6.1", kernel_max="6.10",
                           arch="x86_64|aarch64", config=("CONFIG_A", "!CONFIG_B"))
    assert ex.why_not("6.1.0-9-amd64", "x86_64", {"CONFIG_A": "m"}) is None
    assert ex.why_not("6.12.0-1-amd64", "x86_64", {"CONFIG_A": "m"}) == \
        "kernel 6.12.0-1-amd64 is newer than 6.10"
    assert "CONFIG_B set" in (ex.why_not("6.1.0", "x86_64", {"CONFIG_A": "y", "CONFIG_B": "y"}) or "")


def test_build_exclusive_per_module(world: Path) -> None:
    two = ("PACKAGE_NAME=p\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a\nBUILT_MODULE_NAME[1]=b\n"
           "DEST_MODULE_LOCATION[0]=/extra\nDEST_MODULE_LOCATION[1]=/extra\n")
    conf, _ = read(world, two + "BUILD_EXCLUSIVE_KERNEL[1]='^5\\.'\n")
    assert [m.name for m in conf.package.modules] == ["a"]
    assert conf.package.exclusive == Exclusive()
    kernel = fake_kernel(world, config="CONFIG_Y=y\n")
    conf, _ = read(world, two + "BUILD_EXCLUSIVE_CONFIG[0]=CONFIG_X\nBUILD_EXCLUSIVE_CONFIG[1]=CONFIG_Y\n",
                   kernel)
    assert [m.name for m in conf.package.modules] == ["b"]
    conf, _ = read(world, two + "BUILD_EXCLUSIVE_ARCH[0]=arm\nBUILD_EXCLUSIVE_ARCH[1]=mips\n")
    pkg = conf.package  # nothing left: every module kept, the package says why it is skipped
    assert [m.name for m in pkg.modules] == ["a", "b"]
    assert pkg.exclusive.why_not(KVER, "x86_64", {}) == "architecture x86_64 does not match 'arm'"


def test_deprecated_directives_warn(world: Path) -> None:
    _, warnings = read(world, MINIMAL + "CLEAN='make clean'\nREMAKE_INITRD=yes\nMODULES_CONF[0]=x\n"
                       "MODULES_CONF_ALIAS_TYPE[0]=y\nSIGN_FILE=/x\n")
    for name in ("CLEAN", "REMAKE_INITRD", "MODULES_CONF", "MODULES_CONF_ALIAS_TYPE", "SIGN_FILE"):
        assert any(f": {name} is deprecated and ignored" in w for w in warnings), name


def test_load_definition_dispatches(world: Path) -> None:
    path = write(world, MINIMAL)
    pkg = load_definition(path, lambda m: None, options(world))
    assert (pkg.fmt, pkg.make, pkg.definition) == ("dkms.conf", "make", path)


# ----- framework.conf -----------------------------------------------------------------------

def test_load_framework(world: Path) -> None:
    etc = world / "etc"
    (etc / "framework.conf.d").mkdir(parents=True)
    (etc / "framework.conf").write_text(
        '# comment\ndkms_tree="/srv/dkms"\nsign_file="/usr/lib/linux-kbuild-${kernelver%.*}/sign"\n'
        "unknown_thing=1\necho noise\n")
    (etc / "framework.conf.d" / "20-b.conf").write_text("dkms_tree=/srv/other\r\n")
    (etc / "framework.conf.d" / "10-a.conf").write_text("verbose=1\ndkms_tree=/srv/first\n")
    (etc / "framework.conf.d" / "30-c.conf.disabled").write_text("verbose=\n")
    got = load_framework(etc, lambda m: None, kernelver="6.1.0-9-amd64")
    assert got == {"dkms_tree": "/srv/other", "verbose": "1",
                   "sign_file": "/usr/lib/linux-kbuild-6.1/sign"}
    assert load_framework(world / "nothing", lambda m: None) == {}
    (etc / "framework.conf").write_text("if\n")
    with pytest.raises(ConfigError, match="syntax error"):
        load_framework(etc, lambda m: None)


def test_framework_variables_of_dkms() -> None:
    """Every variable DKMS 3.0.10 reads from framework.conf is read."""
    dkms = Path("/usr/sbin/dkms")
    if not dkms.is_file():
        pytest.skip("dkms is not installed")
    text = dkms.read_text()
    for line in ("dkms_framework_nonsigning_variables", "dkms_framework_signing_variables"):
        start = text.index(f'readonly {line}="') + len(f'readonly {line}="')
        for name in text[start:text.index('"', start)].split():
            assert name in FRAMEWORK_VARIABLES


# ----- the manual page ------------------------------------------------------------------------

def test_every_directive_is_documented() -> None:
    def names(title: str) -> List[str]:
        out = []
        for line in term_lines(section("ckms-dkms.conf.5", title)):
            out += [word.split("[")[0] for word in line.replace("*", "").split(", ")]
        return out
    assert first_bold(term_lines(section("ckms-dkms.conf.5", "DIRECTIVES"))[0]) == "PACKAGE_NAME"
    assert names("DIRECTIVES") == list(DIRECTIVES)
    assert sorted(names("DEPRECATED DIRECTIVES")) == sorted(DEPRECATED)
    framework = section("ckms-dkms.conf.5", "FRAMEWORK CONFIGURATION")
    for name in FRAMEWORK_VARIABLES:
        assert f"*{name}*" in framework, name
    variables = " ".join(term_lines(section("ckms-dkms.conf.5", "VARIABLES")))
    for name in ("kernelver", "arch", "kernel_source_dir", "dkms_tree", "source_tree",
                 "install_tree", "module", "module_version"):
        assert f"*{name}*" in variables, name
    assert source("ckms-dkms.conf.5").splitlines()[0] == "ckms-dkms.conf(5)"


def test_manual_example_loads(world: Path) -> None:
    block = literal_blocks(section("ckms-dkms.conf.5", "EXAMPLES"))[0]
    conf, warnings = read(world, block)
    assert [m.dest_relpath for m in conf.package.modules] == ["updates/dkms/acpi_call.ko"]
    assert warnings == []
