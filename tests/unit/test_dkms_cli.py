"""ckms-dkms: DKMS 3.x's grammar, actions, exit codes and status lines.

No real kernel: fake kernels are directories ``<installtree>/<kver>/build``
holding a Makefile and a .config, and the packages' dkms.conf ``MAKE`` fakes
the build (with gcc when a test needs a module modinfo can read).  The
command runs in-process; every test takes well under a second.  As root the
dkms.conf files are evaluated as ``nobody``, so the test area is a
world-readable directory under /var/tmp.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from ckms import dkms_cli
from ckms.dkms import DkmsError, DkmsOutput, exit_code
from ckms.dkms.actions import Session
from ckms.dkms.args import ACTIONS, DEPRECATED, FLAGS, UNSUPPORTED, UNSUPPORTED_ACTIONS, VALUE_OPTIONS, parse
from ckms.dkms.framework import locations, read_framework
from ckms.dkms.status import DIFF, MISSING, ORIGINAL, scan, write_manifest
from ckms.errors import BuildFailed, CkmsError, ConfigError, KernelError, Skipped
from ckms.install import Transaction
from ckms.sanity import VerInfo, compare
from ckms.sanity import check as sanity_check
from tests.conftest import ROOT
from tests.unit.test_docs import all_bold, plain, section, term_lines, terms

K1, K2 = "9.1.0-test", "9.2.0-test"  # K2 compresses its modules with xz
MACHINE = os.uname().machine

FOO_CONF = """\
PACKAGE_NAME="foo"
PACKAGE_VERSION="{version}"
BUILT_MODULE_NAME[0]="foo"
DEST_MODULE_LOCATION[0]="/extra"
MAKE[0]="{make}"
STRIP[0]="no"
AUTOINSTALL="yes"
{extra}"""
FAKE_MAKE = "printf fake-$kernelver > foo.ko"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Area:
    base: Path

    @property
    def tree(self) -> Path:
        return self.base / "tree"

    @property
    def src(self) -> Path:
        return self.base / "src"

    @property
    def inst(self) -> Path:
        return self.base / "inst"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    def args(self) -> List[str]:
        return ["--dkmstree", str(self.tree), "--sourcetree", str(self.src),
                "--installtree", str(self.inst), "--etcdir", str(self.etc)]

    def run(self, *argv: str, code: Optional[int] = 0) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = dkms_cli.main([*argv, *self.args()])
        result = Result(rc, out.getvalue(), err.getvalue())
        assert "Traceback" not in result.err
        if code is not None:
            assert rc == code, f"ckms-dkms {' '.join(argv)}: exit {rc}, wanted {code}\n{result}"
        return result

    def status(self, *argv: str) -> List[str]:
        return self.run("status", *argv).out.splitlines()

    def package(self, name: str = "foo", version: str = "1.0", make: str = FAKE_MAKE,
                extra: str = "", files: Optional[dict[str, str]] = None) -> Path:
        """A source tree <sourcetree>/<name>-<version> with its dkms.conf."""
        src = self.src / f"{name}-{version}"
        src.mkdir(parents=True)
        conf = FOO_CONF.format(version=version, make=make.replace('"', '\\"'), extra=extra)
        (src / "dkms.conf").write_text(conf.replace('"foo"', f'"{name}"'))
        for fname, text in (files or {}).items():
            (src / fname).write_text(text)
        return src

    def kernel(self, kver: str, config: str = "CONFIG_MODULES=y\n") -> Path:
        hdr = self.inst / kver / "build"
        hdr.mkdir(parents=True)
        (hdr / "Makefile").write_text("# fake kernel headers\n")
        (hdr / ".config").write_text(config)
        return self.inst / kver

    def installed(self, kver: str) -> List[str]:
        kdir = self.inst / kver
        return sorted(str(p.relative_to(kdir)) for p in kdir.rglob("*.ko*") if "build" not in p.parts)


@pytest.fixture
def area() -> Iterator[Area]:
    base = Path(tempfile.mkdtemp(prefix="ckms-dkms-unit-", dir="/var/tmp" if os.geteuid() == 0 else None))
    os.chmod(base, 0o755)
    a = Area(base)
    for d in (a.tree, a.src, a.inst, a.etc):
        d.mkdir()
    a.kernel(K1)
    a.kernel(K2, "CONFIG_MODULES=y\nCONFIG_MODULE_COMPRESS_XZ=y\n")
    try:
        yield a
    finally:
        shutil.rmtree(base)


def tree_files(area: Area) -> List[str]:
    return sorted(str(p.relative_to(area.tree)) for p in area.tree.rglob("*") if p.name != ".lock")


# ----- the grammar ------------------------------------------------------------------------

def test_grammar_options_anywhere() -> None:
    inv = parse(["-k", "6.1.0-1/x86_64", "install", "--kernelver=6.12.0-2", "foo/1.2",
                 "--dkmstree=/t", "--sourcetree", "/s", "-a", "aarch64", "--force",
                 "--directive", "MAKE=make -C src", "--directive=STRIP[1]=no", "-j", "3"], print)
    assert inv.action == "install" and (inv.module, inv.version) == ("foo", "1.2")
    assert inv.kernels == ["6.1.0-1", "6.12.0-2"] and inv.arches == ["x86_64", "aarch64"]
    assert inv.dkms_tree == Path("/t") and inv.source_tree == Path("/s") and inv.force
    assert inv.directives == [("MAKE", "make -C src"), ("STRIP[1]", "no")] and inv.jobs == 3
    inv = parse(["build", "-m", "foo", "-v", "2", "-k", "A", "-k", "B", "-a", "ppc64le"], print)
    assert (inv.module, inv.version) == ("foo", "2") and inv.arches == ["ppc64le", "ppc64le"]
    assert parse(["status", "-m", "bar/3"], print).module_version("x") == ("bar", "3")


def test_grammar_source_tree_words(tmp_path: Path) -> None:
    (tmp_path / "dkms.conf").write_text("PACKAGE_NAME=x\n")
    assert parse(["add", str(tmp_path)], print).source_dir == tmp_path
    assert parse(["add", str(tmp_path / "dkms.conf")], print).source_dir == tmp_path
    said: List[str] = []
    inv = parse(["status", "a/1", "b/2", "--no-initrd"], said.append)
    assert inv.module == "a" and said == ["Warning: I do not know how to handle b/2.",
                                          "Deprecated feature: --no-initrd"]


@pytest.mark.parametrize("argv, code, words", [
    (["build", "--bogus"], 2, "Unknown option: --bogus"),
    (["build", "install"], 4, "Cannot specify more than one action."),
    (["remove", "-k", "A", "--all"], 2, "You cannot specify a kernel version"),
    (["remove", "-a", "x86_64", "--all"], 3, "You cannot specify an arch"),
    (["build", "-k", "A", "-k", "B", "-k", "C", "-a", "x", "-a", "y"], 1, "1:1 relationship"),
    (["build", "-k"], 2, "Option -k needs a value."),
    (["build", "--directive", "no-equals"], 2, "--directive needs NAME=VALUE"),
    (["build", "-j", "many"], 2, "-j needs a number"),
    (["mktarball"], 2, "not supported"),
    (["build", "--archive=x.tgz"], 2, "not supported"),
])
def test_grammar_errors(argv: List[str], code: int, words: str) -> None:
    with pytest.raises(DkmsError) as err:
        parse(argv, print)
    assert err.value.code == code and words in str(err.value)


def test_help_version_and_no_action(area: Area) -> None:
    assert "Usage: ckms-dkms [action] [options]" in area.run("--help").out
    assert area.run("-V").out.startswith("dkms-3.0.10\nckms-dkms ")
    assert "No action specified." in area.run(code=2).err


# ----- the seed notes' scenario -----------------------------------------------------------------

def test_add_build_install_match_uninstall_remove(area: Area) -> None:
    area.package()
    out = area.run("add", "-m", "foo", "-v", "1.0").out
    assert f"Creating symlink {area.tree}/foo/1.0/source -> {area.src}/foo-1.0" in out
    assert area.status() == ["foo/1.0: added"]

    area.run("build", "foo/1.0", "-k", K1)
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: built"]
    skip = area.run("build", "foo/1.0", "-k", K1).out
    assert f"Module foo/1.0 already built for kernel {K1} ({MACHINE}), skip." in skip

    area.run("install", "foo/1.0", "-k", K1)
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed"]
    (dest,) = area.installed(K1)
    assert (area.inst / K1 / dest).read_text() == f"fake-{K1}"
    assert "already installed" in area.run("install", "foo/1.0", "-k", K1).out

    out = area.run("match", "--templatekernel", K1, "-k", K2).out
    assert f"Matching modules in kernel: {K2} ({MACHINE})" in out
    assert "Module:  foo\nVersion: 1.0" in out
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed",
                             f"foo/1.0, {K2}, {MACHINE}: installed"]
    assert area.installed(K2) == [dest + ".xz"]  # the kernel compresses its modules
    assert area.status("-k", K2) == [f"foo/1.0, {K2}, {MACHINE}: installed"]

    out = area.run("uninstall", "-m", "foo", "-v", "1.0", "-k", K1).out
    assert "Before uninstall, this module version was ACTIVE on this kernel." in out
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: built",
                             f"foo/1.0, {K2}, {MACHINE}: installed"]
    assert area.installed(K1) == []

    out = area.run("remove", "foo/1.0", "--all").out
    assert f"Module foo 1.0 is not installed for kernel {K1} ({MACHINE}). Skipping..." in out
    assert "Deleting module foo-1.0 completely from the DKMS tree." in out
    assert area.status() == [] and tree_files(area) == [] and area.installed(K2) == []


def test_add_a_path_copies_it_into_the_source_tree(area: Area) -> None:
    elsewhere = area.base / "checkout"
    shutil.copytree(ROOT / "examples" / "dkms_test", elsewhere)
    area.run("add", str(elsewhere), "-k", K1)
    assert (area.src / "dkms_test-1.0" / "dkms_test.c").is_file()
    assert os.readlink(area.tree / "dkms_test/1.0/source") == str(area.src / "dkms_test-1.0")
    assert area.status() == ["dkms_test/1.0: added"]
    area.run("add", str(elsewhere), "-k", K1, code=3)


def test_install_builds_first_and_remove_per_kernel(area: Area) -> None:
    area.package()
    area.run("install", "foo/1.0", "-k", K1, "-k", K2)  # adds and builds on the way, as DKMS
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed",
                             f"foo/1.0, {K2}, {MACHINE}: installed"]
    area.run("remove", "foo/1.0", "-k", K1)
    assert area.status() == [f"foo/1.0, {K2}, {MACHINE}: installed"]
    area.run("unbuild", "foo/1.0", "-k", K2)
    assert area.status() == ["foo/1.0: added"] and area.installed(K2) == []


def test_installing_another_version_replaces_the_installed_one(area: Area) -> None:
    area.package(version="1.0", make="printf one > foo.ko")
    area.package(version="1.1", make="printf two > foo.ko")
    area.run("install", "foo/1.0", "-k", K1)
    area.run("install", "foo/1.1", "-k", K1)
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: built",
                             f"foo/1.1, {K1}, {MACHINE}: installed"]
    (dest,) = area.installed(K1)
    assert (area.inst / K1 / dest).read_text() == "two"
    assert not (area.tree / "foo/1.0" / K1 / MACHINE / ".ckms-installed.json").exists()


def test_directive_overrides_the_conf(area: Area) -> None:
    area.package()
    area.run("add", "foo/1.0")
    area.run("build", "foo/1.0", "-k", K1, "--directive", "MAKE=printf overridden > foo.ko")
    assert (area.tree / "foo/1.0" / K1 / MACHINE / "module/foo.ko").read_text() == "overridden"


# ----- exit codes ---------------------------------------------------------------------------------

def test_exit_codes_of_state_errors(area: Area) -> None:
    area.run("add", "-m", "foo", "-v", "1.0", code=2)  # no <sourcetree>/foo-1.0
    area.package()
    area.run("add", "foo/1.0")
    assert "DKMS tree already contains: foo-1.0" in area.run("add", "foo/1.0", code=3).err
    assert "Arguments <module> and <module-version>" in area.run("build", "-m", "foo", code=1).err
    assert "not located in the DKMS tree" in area.run("uninstall", "bar/1", code=3).err
    assert "--all parameter" in area.run("build", "foo/1.0", "--all", code=5).err
    err = area.run("install", "foo/1.0", "-k", "9.0.8-gone", code=21).err  # no headers
    assert "linux-headers-9.0.8-gone" in err
    hdr = area.base / "hdr"
    shutil.copytree(area.inst / K1 / "build", hdr)
    err = area.run("install", "foo/1.0", "-k", "9.0.7-nodir", "--kernelsourcedir", str(hdr), code=6).err
    assert f"The directory {area.inst}/9.0.7-nodir doesn't exist." in err
    assert area.status("-k", "9.0.7-nodir") == [f"foo/1.0, 9.0.7-nodir, {MACHINE}: built"]


def test_exit_codes_of_builds(area: Area) -> None:
    area.package("bad", make="echo the-compiler-said-no; exit 2")
    err = area.run("build", "bad/1.0", "-k", K1, code=10).err
    assert f"Error! Bad return status for module build on kernel: {K1} ({MACHINE})" in err
    assert "the-compiler-said-no" in err and "Consult " in err
    area.package("none", make="true")  # make succeeds, the module is not there
    err = area.run("build", "none/1.0", "-k", K1, code=7).err
    assert f"Build of none.ko failed for: {K1} ({MACHINE})" in err
    area.package("only", extra='BUILD_EXCLUSIVE_KERNEL="^1\\."\n')
    assert "BUILD_EXCLUSIVE" in area.run("build", "only/1.0", "-k", K1, code=77).err
    area.package("broken", extra='BUILT_MODULE_NAME[0]="x.ko"\n')
    err = area.run("add", "broken/1.0", code=8).err
    assert "Bad conf file." in err and "dkms.conf" in err
    assert not (area.tree / "broken").exists()


def test_exit_code_mapping() -> None:
    assert [exit_code(e) for e in (Skipped("x"), KernelError("x"), BuildFailed("x"),
                                   ConfigError("x"), DkmsError(13, "x"))] == [77, 21, 10, 8, 13]


def test_one_kernel_actions(area: Area) -> None:
    area.run("match", "-k", K2, code=1)
    assert "are the same" in area.run("match", "--templatekernel", K1, "-k", K1, code=2).err
    area.run("match", "--templatekernel", K1, "-k", K1, "-k", K2, code=4)
    area.run("match", "--templatekernel", K1, "-k", K2, "nothere", code=3)
    assert "nothing to be done" in area.run("match", "--templatekernel", K1, "-k", K2).out
    assert "exactly one kernel" in area.run("kernel_postinst", code=4).err
    area.run("kernel_prerm", "-k", K1, "-k", K2, code=4)
    area.run("autoinstall", "-k", K1, "--all", code=2)


def test_autoinstall_and_kernel_prerm(area: Area) -> None:
    area.package("foo")
    area.package("manual", extra='AUTOINSTALL=""\n')
    area.package("fails", make="exit 1")
    for name in ("foo", "manual", "fails"):
        area.run("add", f"{name}/1.0")
    res = area.run("kernel_postinst", "-k", K1, code=11)
    assert f"Autoinstall on {K1} succeeded for module(s) foo." in res.out
    assert f"Autoinstall on {K1} failed for module(s) fails." in res.out
    assert "One or more modules failed to install during autoinstall." in res.err
    assert area.status("-k", K1) == ["fails/1.0: added", f"foo/1.0, {K1}, {MACHINE}: installed",
                                     "manual/1.0: added"]
    area.run("kernel_prerm", "-k", K1)
    assert area.status("-k", K1) == ["fails/1.0: added", "foo/1.0: added", "manual/1.0: added"]
    assert area.installed(K1) == []


# ----- status -------------------------------------------------------------------------------------

def fabricate(area: Area, name: str, version: str, kernels: List[str], installed: List[str],
              compressed: bool = False) -> None:
    """A package as DKMS leaves it: source link, module/ files, kernel-* links, updates/dkms."""
    vdir = area.tree / name / version
    vdir.mkdir(parents=True)
    (vdir / "source").symlink_to(area.src / f"{name}-{version}")
    sfx = ".xz" if compressed else ""
    for kver in kernels:
        mod = vdir / kver / MACHINE / "module"
        mod.mkdir(parents=True)
        (mod / f"{name}.ko{sfx}").write_bytes(f"{name}-{version}-{kver}".encode())
        if kver in installed:
            (area.tree / name / f"kernel-{kver}-{MACHINE}").symlink_to(f"{version}/{kver}/{MACHINE}")
            dest = area.inst / kver / "updates" / "dkms"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mod / f"{name}.ko{sfx}", dest / f"{name}.ko{sfx}")


def test_status_lines_order_and_filters(area: Area) -> None:
    fabricate(area, "zeta", "1.0", [K1], [K1])
    fabricate(area, "alpha", "1.10", [K1, K2], [K2], compressed=True)
    fabricate(area, "alpha", "1.9", [], [])
    fabricate(area, "alpha-dev", "2", [K1], [])
    (area.tree / "alpha" / "1.9" / "build").mkdir()  # DKMS's leftovers are not kernels
    (area.tree / "alpha" / "1.9" / "notakernel").mkdir()
    (area.tree / "noversion").mkdir()
    (area.tree / "gone" / "1").mkdir(parents=True)  # no source link: not added
    # the C locale's order of "module/version" (as DKMS's glob): "-" < "/", 1.10 < 1.9
    everything = [f"alpha-dev/2, {K1}, {MACHINE}: built",
                  f"alpha/1.10, {K1}, {MACHINE}: built",
                  f"alpha/1.10, {K2}, {MACHINE}: installed",
                  "alpha/1.9: added",
                  f"zeta/1.0, {K1}, {MACHINE}: installed"]
    assert area.status() == everything
    assert area.status("alpha") == everything[1:4]
    assert area.status("alpha/1.10") == everything[1:3]
    assert area.status("-m", "alpha", "-v", "1.9") == ["alpha/1.9: added"]
    # with -k: one pass per kernel, in the order given; "added" where nothing is built
    assert area.status("-k", K2, "-k", K1) == [
        "alpha-dev/2: added", f"alpha/1.10, {K2}, {MACHINE}: installed", "alpha/1.9: added",
        "zeta/1.0: added",
        f"alpha-dev/2, {K1}, {MACHINE}: built", f"alpha/1.10, {K1}, {MACHINE}: built",
        "alpha/1.9: added", f"zeta/1.0, {K1}, {MACHINE}: installed"]
    assert area.status("-a", "ppc64") == ["alpha-dev/2: added", "alpha/1.10: added",
                                          "alpha/1.9: added", "zeta/1.0: added"]
    assert area.status("-k", f"{K2}/{MACHINE}", "zeta") == ["zeta/1.0: added"]
    assert scan(area.base / "nothing", area.inst) == []


def test_status_warnings(area: Area) -> None:
    fabricate(area, "foo", "1.0", [K1, K2], [K1, K2], compressed=True)
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed",
                             f"foo/1.0, {K2}, {MACHINE}: installed"]
    (area.inst / K1 / "updates/dkms/foo.ko.xz").write_bytes(b"changed")
    orig = area.tree / "foo" / "original_module" / K2 / MACHINE
    orig.mkdir(parents=True)
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed{DIFF}",
                             f"foo/1.0, {K2}, {MACHINE}: installed{ORIGINAL}"]
    (area.inst / K1 / "updates/dkms/foo.ko.xz").unlink()  # not installed where it should be
    assert area.status("-k", K1) == [f"foo/1.0, {K1}, {MACHINE}: installed{DIFF}"]


def test_status_with_a_manifest(area: Area) -> None:
    """ckms-dkms's installs: stat the files the manifest names, compare content when they changed."""
    area.package()
    area.run("install", "foo/1.0", "-k", K2)
    kadir = area.tree / "foo/1.0" / K2 / MACHINE
    assert (kadir / ".ckms-installed.json").is_file()
    (installed,) = area.installed(K2)
    assert installed.endswith(".ko.xz") and (kadir / "module/foo.ko.xz").is_file()
    assert area.status() == [f"foo/1.0, {K2}, {MACHINE}: installed"]
    os.utime(area.inst / K2 / installed)  # touched, same content: compared through xz
    assert area.status() == [f"foo/1.0, {K2}, {MACHINE}: installed"]
    (area.inst / K2 / installed).write_bytes(
        subprocess.run(["xz", "-c"], input=b"other", capture_output=True, check=True).stdout)
    assert area.status() == [f"foo/1.0, {K2}, {MACHINE}: installed{DIFF}"]
    (kadir / "module/foo.ko.xz").unlink()
    assert area.status() == [f"foo/1.0, {K2}, {MACHINE}: installed{MISSING}"]


def test_status_is_stat_only_and_fast(area: Area, monkeypatch: pytest.MonkeyPatch) -> None:
    """32 packages x 2 kernels, all installed: no subprocess, no dkms.conf read, milliseconds."""
    kernels = [K1, K2]
    for i in range(32):
        fabricate(area, f"pkg{i:02}", "1.0", kernels, kernels)
        for kver in kernels:
            kadir = area.tree / f"pkg{i:02}/1.0" / kver / MACHINE
            write_manifest(kadir, area.inst / kver, [(f"pkg{i:02}", f"updates/dkms/pkg{i:02}.ko")])

    def no_subprocess(*a: object, **k: object) -> None:
        raise AssertionError("status ran a subprocess")
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    start = time.perf_counter()
    entries = scan(area.tree, area.inst)
    elapsed = time.perf_counter() - start
    assert len(entries) == 64 and all(e.state == "installed" and not e.extra for e in entries)
    assert elapsed < 0.2, f"status of 64 lines took {elapsed * 1000:.0f} ms"


# ----- install safety -------------------------------------------------------------------------------

MODINFO_C = ('static const char mi[] __attribute__((section(".modinfo"), used)) = '
             '"version={version}\\0srcversion={src}\\0license=GPL";\n')


def versioned(area: Area, version: str, src: str = "OURS") -> Path:
    """A package whose build is a real ELF object with a .modinfo that modinfo reads."""
    return area.package(make="gcc -c mod.c -o foo.ko",
                        files={"mod.c": MODINFO_C.format(version=version, src=src)})


def kernel_module(area: Area, kver: str, version: str, src: str = "THEIRS",
                  where: str = "kernel/drivers/misc") -> Path:
    d = area.inst / kver / where
    d.mkdir(parents=True, exist_ok=True)
    c = area.base / "theirs.c"
    c.write_text(MODINFO_C.format(version=version, src=src))
    subprocess.run(["gcc", "-c", str(c), "-o", str(d / "foo.ko")], check=True)
    return d / "foo.ko"


def test_sanity_check_refuses_a_newer_module(area: Area) -> None:
    versioned(area, "1.0")
    theirs = kernel_module(area, K1, "2.0")
    res = area.run("install", "foo/1.0", "-k", K1, code=6)
    assert "Running module version sanity check." in res.out
    assert ("Error! Module version 1.0 for foo.ko\nis not newer than what is already found in "
            f"kernel {K1} (2.0).\nYou may override by specifying --force.") in res.err
    assert "Installation aborted." in res.err
    assert area.installed(K1) == ["kernel/drivers/misc/foo.ko"]
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: built"]
    area.run("install", "foo/1.0", "-k", K1, "--force")
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed"]
    assert theirs.is_file()  # the kernel's own module is left where it is


def test_sanity_check_refuses_an_identical_module(area: Area) -> None:
    versioned(area, "1.0", src="SAME")
    kernel_module(area, K1, "1.0", src="SAME")
    kernel_module(area, K2, "1.0", src="OTHER")
    res = area.run("install", "foo/1.0", "-k", K1, code=6)
    assert ("Module version 1.0 for foo.ko\nexactly matches what is already found in kernel "
            f"{K1}.\nDKMS will not replace this module.\nYou may override by specifying --force."
            ) in res.err
    area.run("install", "foo/1.0", "-k", K1, "--force-version-override")
    area.run("install", "foo/1.0", "-k", K2)  # same version, other code: installed
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed",
                             f"foo/1.0, {K2}, {MACHINE}: installed"]


def test_sanity_check_lets_newer_and_ambiguous_through(area: Area) -> None:
    versioned(area, "1.10")
    kernel_module(area, K1, "1.9")
    kernel_module(area, K2, "3.0")
    kernel_module(area, K2, "3.0", where="extra")
    res = area.run("install", "foo/1.0", "-k", K1, "-k", K2)
    assert f"Warning: Warning! Cannot do version sanity checking because multiple foo.ko.xz\n" \
           f"modules were found in kernel {K2}." in res.err
    assert "kernel/drivers/misc/foo.ko" in area.installed(K1) and len(area.installed(K1)) == 2
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed",
                             f"foo/1.0, {K2}, {MACHINE}: installed"]


def test_sanity_compare() -> None:
    v = VerInfo
    assert compare(v("2.0", "a"), v("1.10", "b")) == ">"
    assert compare(v("1.9", "a"), v("1.10", "b")) == "<"
    assert compare(v("1.0", "a"), v("1.0", "a")) == "=="
    assert compare(v("1.0", "a"), v("1.0", "b")) == "="
    assert compare(v("", "a"), v("", "b")) == "="  # unversioned modules count as equal
    assert compare(v("", "a"), v("1.0", "b")) == "?"


def test_sanity_check_of_unversioned_modules(tmp_path: Path) -> None:
    assert sanity_check(tmp_path, K1, tmp_path / "x.ko", "x", "").ok  # nothing same-named
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel/x.ko").write_bytes(b"not even ELF")
    (tmp_path / "ours.ko").write_bytes(b"not even ELF")
    assert not sanity_check(tmp_path / "kernel", K1, tmp_path / "ours.ko", "x", "").ok
    (tmp_path / "ours.ko").write_bytes(b"other bytes")
    assert sanity_check(tmp_path / "kernel", K1, tmp_path / "ours.ko", "x", "").ok


# ----- originals ------------------------------------------------------------------------------------

def test_uninstall_restores_every_dkms_archived_original(area: Area) -> None:
    area.package()
    area.run("install", "foo/1.0", "-k", K1)
    (dest,) = area.installed(K1)
    archive = area.tree / "foo" / "original_module" / K1 / MACHINE
    (archive / "collisions" / "kernel" / "drivers").mkdir(parents=True)
    (archive / "foo.ko").write_text("flat original")  # DKMS: one per module, flat
    (archive / "collisions" / "kernel" / "drivers" / "foo.ko").write_text("collision")
    (archive / "stray.ko").write_text("not ours")
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: installed{ORIGINAL}"]
    res = area.run("uninstall", "foo/1.0", "-k", K1)
    assert (area.inst / K1 / dest).read_text() == "flat original"  # back in the module's place
    assert (area.inst / K1 / "kernel/drivers/foo.ko").read_text() == "collision"
    assert "stray.ko" in res.err and (archive / "stray.ko").read_text() == "not ours"
    assert sorted(p.name for p in archive.rglob("*")) == ["stray.ko"]


def test_generate_mok(area: Area) -> None:
    key, cert = area.base / "keys" / "mok.key", area.base / "keys" / "mok.der"
    (area.etc / "framework.conf").write_text(f'mok_signing_key="{key}"\nmok_certificate={cert}\n')
    out = area.run("generate_mok").out
    assert f"Signing key: {key}\nPublic certificate (MOK): {cert}" in out
    assert "generating self signed certificate" in out
    assert key.stat().st_mode & 0o077 == 0
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-noout",
                           "-subject"], capture_output=True, text=True, check=True).stdout
    assert "DKMS module signing key" in text
    assert "generating" not in area.run("generate_mok").out  # there already


# ----- the manual page documents the code ------------------------------------------------------------

def test_every_action_and_option_is_documented() -> None:
    actions = {t for line in term_lines(section("ckms-dkms.8", "ACTIONS")) for t in all_bold(line)}
    assert actions == set(ACTIONS)
    options = section("ckms-dkms.8", "OPTIONS")
    for flag in [*VALUE_OPTIONS, *FLAGS, *DEPRECATED, *UNSUPPORTED, *UNSUPPORTED_ACTIONS]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", options), \
            f"{flag} is not in ckms-dkms.8.scd OPTIONS"


def test_every_exit_status_is_documented() -> None:
    sources = "".join(p.read_text() for p in (ROOT / "src/ckms/dkms").glob("*.py"))
    raised = {int(c) for c in re.findall(r"DkmsError\(\s*(\d+)", sources)}
    mapped = {exit_code(e) for e in (Skipped("x"), KernelError("x"), BuildFailed("x"),
                                     ConfigError("x"), CkmsError("x"))}
    documented = {int(code) for code in terms("ckms-dkms.8", "EXIT STATUS")}
    assert documented == raised | mapped | {0, 130}


def test_status_suffixes_are_documented() -> None:
    status = plain(section("ckms-dkms.8", "STATUS"))
    for suffix in (ORIGINAL, MISSING, DIFF):
        assert suffix.strip() in status


def test_depmod_failure_rolls_back_with_dkms_message(area: Area, monkeypatch: pytest.MonkeyPatch) -> None:
    area.package()
    area.run("build", "foo/1.0", "-k", K1)

    def failing_finish(self: Transaction) -> None:
        for kver in self.done:
            self._roll_back(kver)
        raise CkmsError("depmod failed for the kernel")
    monkeypatch.setattr(Transaction, "finish", failing_finish)
    err = area.run("install", "foo/1.0", "-k", K1, code=6).err
    assert "Problems with depmod detected." in err and "rolled back to built state" in err
    assert area.status() == [f"foo/1.0, {K1}, {MACHINE}: built"] and area.installed(K1) == []
    assert not (area.tree / "foo/1.0" / K1 / MACHINE / ".ckms-installed.json").exists()


def test_quiet_prints_nothing(area: Area) -> None:
    res = area.run("-q", "install", "nothere/1.0", "-k", K1, code=2)
    assert (res.out, res.err) == ("", "")


def test_the_mok_key_signs_builds(area: Area) -> None:
    key, cert = area.base / "mok.key", area.base / "mok.pub"
    where = locations(parse(area.args() + ["build"], print),
                      {"mok_signing_key": str(key), "mok_certificate": str(cert)})
    out = DkmsOutput()
    assert Session(parse(["build"], print), where, out).ctx.config.sign_key is None
    key.write_text("key")
    cert.write_text("cert")
    cfg = Session(parse(["build"], print), where, out).ctx.config
    assert (cfg.sign_key, cfg.sign_cert) == (key, cert)


def test_locations_from_framework_conf_and_the_command_line(area: Area) -> None:
    (area.etc / "framework.conf").write_text('# comments and\n\ndkms_tree="/srv/dkms"\n')
    (area.etc / "framework.conf.d").mkdir()
    (area.etc / "framework.conf.d" / "10-jobs.conf").write_text("parallel_jobs=$((1 + 2))\n")
    framework = read_framework(area.etc, print)
    where = locations(parse(["status"], print), framework)
    assert (where.dkms_tree, where.source_tree, where.jobs) == (Path("/srv/dkms"), Path("/usr/src"), 3)
    assert locations(parse(["status", "--dkmstree", "/t"], print), framework).dkms_tree == Path("/t")
    (area.etc / "framework.conf").write_text("# dkms_tree=/not/this\n")
    (area.etc / "framework.conf.d" / "10-jobs.conf").unlink()
    assert read_framework(area.etc, print) == {}  # comments only: no bash at all
