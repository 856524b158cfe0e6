"""add -> build -> install -> uninstall -> clean -> remove, through the real CLI.

No real kernel: a fake headers dir (a Makefile and a .config) is passed with
--hdrdir, and the package's build hook fakes the build, so every test runs in
well under a second and needs no root (installs go to a DESTDIR).
"""

from __future__ import annotations

import json
import lzma
import os
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest

from tests.conftest import RunCkms, run_ckms_cmd

KVER = "9.9.9-test"
MACHINE = os.uname().machine
XZ_CONFIG = "CONFIG_MODULES=y\nCONFIG_MODULE_COMPRESS_XZ=y\n"
PLAIN_CONFIG = "CONFIG_MODULES=y\n"

FOO_INI = """\
[general]
name = foo
version = 1.0
strip = no

[hooks]
build = printf 'fake' > foo.ko

[module.foo]
path = .
dest = extra/foo
"""


def fake_kernel(base: Path, config: str = XZ_CONFIG) -> Path:
    """A directory that passes for kernel headers: a Makefile and a .config."""
    hdr = base / "hdr"
    hdr.mkdir(parents=True)
    (hdr / "Makefile").write_text("# fake kernel headers for ckms tests\n")
    (hdr / ".config").write_text(config)
    return hdr


def write_pkg(base: Path, ini: str = FOO_INI, dirname: str = "src") -> Path:
    """A source tree holding ini as its ckms.ini."""
    src = base / dirname
    src.mkdir(parents=True)
    (src / "ckms.ini").write_text(ini)
    return src


def ini_with(build: str, extra_hooks: str = "", general: str = "strip = no\n") -> str:
    return (f"[general]\nname = foo\nversion = 1.0\n{general}"
            f"[hooks]\nbuild = {build}\n{extra_hooks}"
            "[module.foo]\npath = .\ndest = extra/foo\n")


def only_error(stderr: str) -> str:
    """The single error message on stderr (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ckms: error:")]
    assert len(errors) == 1, stderr
    return stderr[stderr.index("ckms: error:"):]


def tree_entries(statedir: Path) -> List[str]:
    return sorted(str(p.relative_to(statedir)) for p in statedir.rglob("*") if p.name != ".lock")


@pytest.fixture
def hdrdir(tmp_path: Path) -> Path:
    return fake_kernel(tmp_path)


@pytest.fixture
def kck(ckms: RunCkms, hdrdir: Path) -> RunCkms:
    """ckms for the fake kernel."""
    def run(*args: str, check: Optional[int] = 0) -> subprocess.CompletedProcess[str]:
        return ckms(*args, "-k", KVER, "--hdrdir", str(hdrdir), check=check)
    return run


@pytest.fixture
def destdir(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


def state(kck: RunCkms, ref: str = "foo=1.0") -> str:
    words = kck("plain-status", ref).stdout.split()
    assert words[:4] == [ref.split("=")[0], ref.split("=")[1], KVER, MACHINE], words
    return words[4]


def built_dir(statedir: Path) -> Path:
    return statedir / "foo" / "1.0" / KVER / MACHINE


def failed_dir(statedir: Path) -> Path:
    return statedir / "foo" / "1.0" / f".failed-{KVER}-{MACHINE}"


# ----- the whole life of a package ------------------------------------------------

def test_lifecycle(tmp_path: Path, kck: RunCkms, statedir: Path, destdir: Path) -> None:
    src = write_pkg(tmp_path)
    assert f"added foo=1.0 from {src}" in kck("add", str(src)).stdout
    assert kck("status", "foo").stdout == f"foo, 1.0, {KVER}, {MACHINE}: added\n"
    assert os.readlink(statedir / "foo" / "1.0" / "source") == str(src)

    out = kck("build", "foo=1.0").stdout
    assert f"built foo=1.0 for {KVER}/{MACHINE}" in out
    assert state(kck) == "built"
    # kept compressed as the kernel stores its modules (the fake kernel: xz), as DKMS does
    assert lzma.decompress((built_dir(statedir) / "module" / "foo.ko.xz").read_bytes()) == b"fake"
    assert not list((statedir / "foo" / "1.0").glob(".build-*"))

    kck("install", "foo=1.0", "-d", str(destdir))
    assert state(kck) == "installed"
    installed = destdir / KVER / "extra" / "foo" / "foo.ko.xz"
    assert installed.is_file()
    assert sorted(p.name for p in installed.parent.iterdir()) == ["foo.ko.xz"]
    subprocess.run(["xz", "-t", str(installed)], check=True)
    assert subprocess.run(["xz", "-dc", str(installed)], capture_output=True,
                          check=True).stdout == b"fake"
    assert os.readlink(statedir / "foo" / f"kernel-{KVER}-{MACHINE}") == f"1.0/{KVER}/{MACHINE}"

    # installing again is a no-op
    assert "already installed" in kck("install", "foo=1.0", "-d", str(destdir)).stdout

    kck("uninstall", "foo", "-d", str(destdir))
    assert state(kck) == "built"
    assert not installed.exists()
    assert list(destdir.rglob("*")) == [destdir / KVER]  # empty dirs pruned up to the kernel dir

    kck("clean", "foo=1.0")
    assert state(kck) == "added"
    assert not built_dir(statedir).parent.exists()

    assert "removed foo=1.0" in kck("remove", "foo=1.0").stdout
    assert tree_entries(statedir) == []
    assert kck("status").stdout == ""
    assert src.is_dir() and (src / "ckms.ini").is_file()  # the source is not ours to delete

    # and it can be added again
    kck("add", str(src))
    assert state(kck) == "added"


def test_install_uncompressed_when_the_kernel_says_so(tmp_path: Path, ckms: RunCkms,
                                                      destdir: Path) -> None:
    hdr = fake_kernel(tmp_path / "k", PLAIN_CONFIG)
    src = write_pkg(tmp_path)
    ckms("add", str(src))
    ckms("build", "foo=1.0", "-k", KVER, "--hdrdir", str(hdr))
    ckms("install", "foo=1.0", "-k", KVER, "--hdrdir", str(hdr), "-d", str(destdir))
    assert (destdir / KVER / "extra" / "foo" / "foo.ko").read_text() == "fake"
    assert not (destdir / KVER / "extra" / "foo" / "foo.ko.xz").exists()


def test_compression_option(tmp_path: Path, kck: RunCkms, destdir: Path) -> None:
    kck("add", str(write_pkg(tmp_path)))
    kck("build", "foo=1.0")
    moddir = destdir / KVER / "extra" / "foo"
    for comp, tester in (("gz", ["gzip", "-t"]), ("zst", ["zstd", "-q", "-t"])):
        kck("install", "foo=1.0", "-d", str(destdir), "-x", comp)
        assert [p.name for p in moddir.iterdir()] == [f"foo.ko.{comp}"]
        subprocess.run([*tester, str(moddir / f"foo.ko.{comp}")], check=True)
        kck("uninstall", "foo", "-d", str(destdir))


def test_build_again_is_a_noop_and_force_rebuilds(tmp_path: Path, kck: RunCkms,
                                                  statedir: Path, destdir: Path) -> None:
    count = tmp_path / "count"
    kck("add", str(write_pkg(tmp_path, ini_with(f"echo run >> {count}; printf 'fake' > foo.ko"))))
    kck("build", "foo=1.0")
    module = built_dir(statedir) / "module" / "foo.ko.xz"
    before = module.stat().st_ino
    out = kck("build", "foo=1.0").stdout
    assert f"foo=1.0 is already built for {KVER}/{MACHINE}" in out
    assert count.read_text() == "run\n"
    assert module.stat().st_ino == before

    kck("install", "foo=1.0", "-d", str(destdir))
    kck("build", "foo=1.0", "--force")
    assert count.read_text() == "run\nrun\n"
    assert module.stat().st_ino != before
    assert state(kck) == "installed"  # a rebuild keeps the installed state
    assert not list((statedir / "foo" / "1.0").glob(".*"))  # no build or trash dirs left


def test_each_build_starts_from_a_fresh_copy(tmp_path: Path, kck: RunCkms) -> None:
    src = write_pkg(tmp_path, ini_with("test ! -e stale; touch stale; printf 'fake' > foo.ko"))
    kck("add", str(src))
    kck("build", "foo=1.0")
    kck("build", "foo=1.0", "-f")  # would fail on a stale copy
    assert not (src / "stale").exists()  # the build never writes into the source


# ----- originals ---------------------------------------------------------------------

def test_uninstall_restores_the_original(tmp_path: Path, kck: RunCkms, statedir: Path,
                                         destdir: Path) -> None:
    moddir = destdir / KVER / "extra" / "foo"
    moddir.mkdir(parents=True)
    (moddir / "foo.ko").write_text("original module")
    (moddir / "other.ko").write_text("unrelated")

    kck("add", str(write_pkg(tmp_path)))
    kck("build", "foo=1.0")
    out = kck("install", "foo=1.0", "-d", str(destdir)).stdout
    assert "kept the original extra/foo/foo.ko" in out
    assert sorted(p.name for p in moddir.iterdir()) == ["foo.ko.xz", "other.ko"]
    backup = statedir / "foo" / "original_module" / KVER / MACHINE / "extra" / "foo" / "foo.ko"
    assert backup.read_text() == "original module"

    out = kck("uninstall", "foo=1.0", "-d", str(destdir)).stdout
    assert "restored the original extra/foo/foo.ko" in out
    assert (moddir / "foo.ko").read_text() == "original module"
    assert (moddir / "other.ko").read_text() == "unrelated"
    assert sorted(p.name for p in moddir.iterdir()) == ["foo.ko", "other.ko"]
    assert not (statedir / "foo" / "original_module").exists()

    kck("clean", "foo=1.0")
    kck("remove", "foo=1.0")
    assert tree_entries(statedir) == []


def test_original_in_another_compression_is_kept_too(tmp_path: Path, kck: RunCkms,
                                                     destdir: Path) -> None:
    moddir = destdir / KVER / "extra" / "foo"
    moddir.mkdir(parents=True)
    (moddir / "foo.ko.zst").write_bytes(b"zstd original")
    kck("add", str(write_pkg(tmp_path)))
    kck("build", "foo=1.0")
    kck("install", "foo=1.0", "-d", str(destdir))
    # never two variants of one module side by side: modprobe would pick either
    assert sorted(p.name for p in moddir.iterdir()) == ["foo.ko.xz"]
    kck("uninstall", "foo", "-d", str(destdir))
    assert sorted(p.name for p in moddir.iterdir()) == ["foo.ko.zst"]
    assert (moddir / "foo.ko.zst").read_bytes() == b"zstd original"


# ----- commands in the wrong state -----------------------------------------------------

def test_remove_refuses_while_built(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    kck("add", str(write_pkg(tmp_path)))
    kck("build", "foo=1.0")
    before = tree_entries(statedir)
    msg = only_error(kck("remove", "foo=1.0", check=4).stderr)
    assert "foo=1.0" in msg and KVER in msg and "clean" in msg
    assert tree_entries(statedir) == before
    kck("clean", "foo=1.0")
    kck("remove", "foo=1.0")
    assert tree_entries(statedir) == []


def test_clean_refuses_while_installed(tmp_path: Path, kck: RunCkms, destdir: Path) -> None:
    kck("add", str(write_pkg(tmp_path)))
    kck("build", "foo=1.0")
    kck("install", "foo=1.0", "-d", str(destdir))
    msg = only_error(kck("clean", "foo=1.0", check=4).stderr)
    assert "installed" in msg and "uninstall foo" in msg
    assert state(kck) == "installed"


@pytest.mark.parametrize("steps, cmd, words", [
    ([], ["build", "foo=1.0"], ["foo=1.0 is not added", "ckms add"]),
    ([], ["install", "foo=1.0", "-d", "{dest}"], ["foo=1.0 is not added"]),
    ([["add"]], ["install", "foo=1.0", "-d", "{dest}"], ["not built", "build foo=1.0"]),
    ([["add"]], ["uninstall", "foo", "-d", "{dest}"], ["foo is not installed"]),
    ([["add"]], ["clean", "foo=1.0"], ["foo=1.0 is not built for " + KVER]),
    ([["add"]], ["add", "{src}"], ["already added", "{src}"]),
    ([["add"]], ["build", "foo=2.0"], ["foo=2.0 is not added", "added versions: 1.0"]),
    ([["add"], ["build", "foo=1.0"], ["install", "foo=1.0", "-d", "{dest}"]],
     ["uninstall", "foo=2.0", "-d", "{dest}"], ["foo=2.0 is not installed", "foo=1.0 is"]),
])
def test_wrong_state(tmp_path: Path, kck: RunCkms, statedir: Path, destdir: Path,
                     steps: List[List[str]], cmd: List[str], words: List[str]) -> None:
    src = write_pkg(tmp_path)

    def fill(args: List[str]) -> List[str]:
        return [a.format(src=src, dest=destdir) for a in args]

    for step in steps:
        kck(*(fill(step) if step != ["add"] else ["add", str(src)]))
    before = tree_entries(statedir)
    msg = only_error(kck(*fill(cmd), check=4).stderr)
    for word in fill(words):
        assert word in msg, msg
    assert tree_entries(statedir) == before


# ----- failed builds -------------------------------------------------------------------

FLAKY = "if test -e ok; then printf 'fake' > foo.ko; else echo hook-said-no; exit 1; fi"


def test_failed_build(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    src = write_pkg(tmp_path, ini_with(FLAKY))
    kck("add", str(src))
    proc = kck("build", "foo=1.0", check=8)
    msg = only_error(proc.stderr)
    log = failed_dir(statedir) / "log" / "build.log"
    assert f"build of foo=1.0 for {KVER} failed (exit status 1)" in msg
    assert str(log) in msg and "hook-said-no" in msg
    assert "hook-said-no" in log.read_text()
    assert not built_dir(statedir).exists()
    assert not list((statedir / "foo" / "1.0").glob(".build-*"))

    status = kck("status", "foo=1.0").stdout
    assert status == f"foo, 1.0, {KVER}, {MACHINE}: failed (log: {log.parent})\n"
    assert state(kck) == "failed"
    (record,) = json.loads(kck("status", "--json", "foo").stdout)
    assert record["state"] == "failed" and record["log"] == str(log.parent)

    # a failed build is no build: remove works
    kck("remove", "foo=1.0", check=0)
    assert tree_entries(statedir) == []


def test_successful_build_clears_the_failure(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    src = write_pkg(tmp_path, ini_with(FLAKY))
    kck("add", str(src))
    kck("build", "foo=1.0", check=8)
    kck("build", "foo=1.0", check=8)  # failing again replaces the old failure
    assert len(list((statedir / "foo" / "1.0").glob(".*"))) == 1
    (src / "ok").touch()
    kck("build", "foo=1.0")
    assert state(kck) == "built"
    assert not failed_dir(statedir).exists()
    (record,) = json.loads(kck("status", "--json").stdout)
    assert record["log"] is None


def test_clean_drops_a_failed_build(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    kck("add", str(write_pkg(tmp_path, ini_with("exit 3"))))
    kck("build", "foo=1.0", check=8)
    assert "cleaned" in kck("clean", "foo=1.0").stdout
    assert state(kck) == "added"
    assert not failed_dir(statedir).exists()


def test_build_that_produces_no_module(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    kck("add", str(write_pkg(tmp_path, ini_with("echo compiled nothing"))))
    msg = only_error(kck("build", "foo=1.0", check=8).stderr)
    assert "produced no ./foo.ko" in msg and str(failed_dir(statedir) / "log") in msg
    assert state(kck) == "failed"


def test_failing_pre_build_stops_the_build(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    count = tmp_path / "count"
    ini = ini_with(f"echo run >> {count}; printf 'fake' > foo.ko",
                   extra_hooks="pre_build = echo nope; false\n")
    kck("add", str(write_pkg(tmp_path, ini)))
    msg = only_error(kck("build", "foo=1.0", check=8).stderr)
    assert "pre_build of foo=1.0" in msg
    assert not count.exists()
    assert "nope" in (failed_dir(statedir) / "log" / "pre_build.log").read_text()


# ----- hooks ---------------------------------------------------------------------------

ENV_HOOK = "env | sort > ../env.txt; printf 'fake' > foo.ko"
CKMS_VARS = ["MAKE", "CKMS_PACKAGE_NAME", "CKMS_PACKAGE_VERSION", "CKMS_KERNEL_VERSION",
             "CKMS_KERNEL_MACHINE", "CKMS_KERNEL_ARCH", "CKMS_KERNEL_HDRDIR", "CKMS_JOBS",
             "CKMS_MAKE_ARGS", "CKMS_STATEDIR", "CKMS_DESTDIR"]


def hook_env_of(log: Path) -> dict[str, str]:
    env = {}
    for line in log.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            env[key] = value
    return env


def test_hooks_get_the_ckms_variables(tmp_path: Path, kck: RunCkms, statedir: Path,
                                      hdrdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKMS_TEST_LEAK", "leaked")
    ini = ini_with("printf 'fake' > foo.ko",
                   extra_hooks="configure = echo configuring\npre_build = env\n"
                               "post_build = echo post $CKMS_PACKAGE_NAME\n")
    kck("add", str(write_pkg(tmp_path, ini)))
    kck("build", "foo=1.0", "-j", "3", "-q")
    logdir = built_dir(statedir) / "log"
    assert sorted(p.name for p in logdir.iterdir()) == [
        "build.log", "configure.log", "post_build.log", "pre_build.log"]
    assert "configuring" in (logdir / "configure.log").read_text()
    assert "post foo" in (logdir / "post_build.log").read_text()
    env = hook_env_of(logdir / "pre_build.log")
    for var in CKMS_VARS:
        assert var in env, var
    assert env["CKMS_PACKAGE_NAME"] == "foo"
    assert env["CKMS_PACKAGE_VERSION"] == "1.0"
    assert env["CKMS_KERNEL_VERSION"] == KVER
    assert env["CKMS_KERNEL_MACHINE"] == MACHINE
    assert env["CKMS_KERNEL_HDRDIR"] == str(hdrdir)
    assert env["CKMS_JOBS"] == "3"
    assert env["CKMS_STATEDIR"] == str(statedir)
    assert env["MAKE"] in ("gmake", "make")
    assert env["SHELL"] == "/bin/sh"
    assert "CKMS_TEST_LEAK" not in env  # a minimal environment, not the caller's
    assert env["PWD"].startswith(str(statedir / "foo" / "1.0" / f".build-{KVER}-{MACHINE}-"))


def test_build_output_is_shown_unless_quiet(tmp_path: Path, kck: RunCkms) -> None:
    kck("add", str(write_pkg(tmp_path, ini_with("echo visible-output; printf 'fake' > foo.ko"))))
    assert "visible-output" in kck("build", "foo=1.0").stdout
    assert "visible-output" not in kck("build", "foo=1.0", "-f", "-q").stdout


def test_relative_paths_reach_hooks_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kernel(tmp_path)
    (tmp_path / "state").mkdir()
    src = write_pkg(tmp_path, ini_with('test -f "$CKMS_KERNEL_HDRDIR/Makefile" && '
                                       'test -d "$CKMS_STATEDIR/foo" && printf fake > foo.ko'))
    monkeypatch.chdir(tmp_path)
    run_ckms_cmd(["-s", "state", "add", str(src)])
    run_ckms_cmd(["-s", "state", "build", "foo=1.0", "-k", KVER, "--hdrdir", "hdr"])


def test_install_hooks(tmp_path: Path, kck: RunCkms, statedir: Path, destdir: Path) -> None:
    trace = tmp_path / "trace"
    hooks = "".join(f'{h} = echo "{h} $CKMS_KERNEL_VERSION $CKMS_DESTDIR" >> {trace}\n'
                    for h in ("pre_install", "post_install", "pre_remove", "post_remove"))
    kck("add", str(write_pkg(tmp_path, ini_with("printf 'fake' > foo.ko", extra_hooks=hooks))))
    kck("build", "foo=1.0")
    kck("install", "foo=1.0", "-d", str(destdir))
    kck("uninstall", "foo", "-d", str(destdir))
    assert trace.read_text().splitlines() == [
        f"{h} {KVER} {destdir}" for h in ("pre_install", "post_install", "pre_remove", "post_remove")]
    assert (built_dir(statedir) / "log" / "post_install.log").is_file()


def test_failing_pre_install_installs_nothing(tmp_path: Path, kck: RunCkms, destdir: Path) -> None:
    ini = ini_with("printf 'fake' > foo.ko", extra_hooks="pre_install = echo refusing; exit 2\n")
    kck("add", str(write_pkg(tmp_path, ini)))
    kck("build", "foo=1.0")
    msg = only_error(kck("install", "foo=1.0", "-d", str(destdir), check=1).stderr)
    assert "pre_install hook of foo=1.0 failed" in msg and "refusing" in msg
    assert state(kck) == "built"
    assert list(destdir.rglob("*.ko*")) == []


# ----- strip ---------------------------------------------------------------------------------

STRIP_CONFIG = "[ckms]\nstrip = sh -c 'printf +stripped >> \"$0\"'\n"


# module name -> its [module] strip line, for each package-level setting; the
# expected result is whether the module file went through the strip command
STRIP_CASES = [
    ("strip = yes\n", {"inherit": ("", True), "off": ("strip = no", False),
                        "shfalse": ("strip = sh: false", False)}),
    ("strip = no\n", {"inherit": ("", False), "on": ("strip = yes", True),
                       "shbuilddir": ("strip = sh: test -e shbuilddir.ko", True)}),
    ("", {"inherit": ("", True)}),  # strip is the default
    (f"strip = sh: test \"$CKMS_KERNEL_VERSION\" = {KVER}\n", {"inherit": ("", True),
                                                               "off": ("strip = 0", False)}),
    ("strip = sh: test \"$CKMS_KERNEL_VERSION\" = 1.0\n", {"inherit": ("", False),
                                                          "on": ("strip = true", True)}),
]


@pytest.mark.parametrize("general, modules", STRIP_CASES)
def test_strip(tmp_path: Path, kck: RunCkms, statedir: Path,
               general: str, modules: dict[str, tuple[str, bool]]) -> None:
    config = tmp_path / "config.ini"
    config.write_text(STRIP_CONFIG)
    build = "; ".join(f"printf fake > {m}.ko" for m in modules)
    ini = (f"[general]\nname = foo\nversion = 1.0\n{general}[hooks]\nbuild = {build}\n"
           + "".join(f"[module.{m}]\npath = .\ndest = extra\n{line}\n"
                     for m, (line, _) in modules.items()))
    kck("add", str(write_pkg(tmp_path, ini)))
    kck("build", "foo=1.0", "-C", str(config))
    for mod, (_, stripped) in modules.items():
        content = lzma.decompress((built_dir(statedir) / "module" / f"{mod}.ko.xz").read_bytes())
        assert content == (b"fake+stripped" if stripped else b"fake"), mod


def test_failing_strip_fails_the_build(tmp_path: Path, kck: RunCkms, statedir: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text("[ckms]\nstrip = false\n")
    kck("add", str(write_pkg(tmp_path, ini_with("printf 'fake' > foo.ko", general=""))))
    msg = only_error(kck("build", "foo=1.0", "-C", str(config), check=8).stderr)
    assert "strip failed for foo=1.0" in msg
    assert state(kck) == "failed"


# ----- several modules ------------------------------------------------------------------

PAIR_INI = """\
[general]
name = duo
version = 2.1
strip = no
[hooks]
build = mkdir -p core user && printf core > core/duo_core.ko && printf user > user/duo_user.ko
[module.duo_user]
path = user
dest = extra/duo
[module.duo_core]
path = core
dest = extra/duo
"""


def test_several_modules(tmp_path: Path, kck: RunCkms, hdrdir: Path, destdir: Path) -> None:
    (hdrdir / ".config").write_text(PLAIN_CONFIG)
    kck("add", str(write_pkg(tmp_path, PAIR_INI)))
    kck("build", "duo=2.1")
    kck("install", "duo=2.1", "-d", str(destdir))
    moddir = destdir / KVER / "extra" / "duo"
    assert {p.name: p.read_text() for p in moddir.iterdir()} == {
        "duo_core.ko": "core", "duo_user.ko": "user"}
    assert state(kck, "duo=2.1") == "installed"
    kck("uninstall", "duo=2.1", "-d", str(destdir))
    assert not moddir.exists()


# ----- status -----------------------------------------------------------------------------

def test_status_formats(tmp_path: Path, kck: RunCkms, ckms: RunCkms, hdrdir: Path,
                        destdir: Path) -> None:
    kck("add", str(write_pkg(tmp_path)))
    kck("add", str(write_pkg(tmp_path, FOO_INI.replace("1.0", "1.10"), "src2")))
    kck("add", str(write_pkg(tmp_path, FOO_INI.replace("1.0", "1.9"), "src3")))
    kck("build", "foo=1.10")
    kck("install", "foo=1.10", "-d", str(destdir))
    kck("build", "foo=1.9")

    assert kck("status").stdout.splitlines() == [  # versions sorted naturally
        f"foo, 1.0, {KVER}, {MACHINE}: added",
        f"foo, 1.9, {KVER}, {MACHINE}: built",
        f"foo, 1.10, {KVER}, {MACHINE}: installed",
    ]
    assert kck("plain-status", "foo").stdout.splitlines() == [
        f"foo 1.0 {KVER} {MACHINE} added",
        f"foo 1.9 {KVER} {MACHINE} built",
        f"foo 1.10 {KVER} {MACHINE} installed",
    ]
    assert kck("plain-status", "foo=1.9").stdout == f"foo 1.9 {KVER} {MACHINE} built\n"
    records = json.loads(kck("status", "--json").stdout)
    assert records == [
        {"name": "foo", "version": v, "kernel": KVER, "arch": MACHINE, "state": s, "log": None}
        for v, s in (("1.0", "added"), ("1.9", "built"), ("1.10", "installed"))
    ]
    assert json.loads(kck("status", "--json", "nosuch").stdout) == []
    assert kck("status", "nosuch").stdout == ""

    # without -k: every kernel with state in the tree (and headers on this machine)
    lines = ckms("status").stdout.splitlines()
    assert f"foo, 1.10, {KVER}, {MACHINE}: installed" in lines
    assert f"foo, 1.0, {KVER}, {MACHINE}: added" in lines


def test_status_takes_at_most_one_package(kck: RunCkms) -> None:
    msg = only_error(kck("status", "a", "b", check=2).stderr)
    assert "at most one" in msg


def test_status_needs_no_headers(tmp_path: Path, ckms: RunCkms) -> None:
    ckms("add", str(write_pkg(tmp_path)))
    assert ckms("plain-status", "-k", "1.2.3-none").stdout == f"foo 1.0 1.2.3-none {MACHINE} added\n"


# ----- bad input ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One state tree with foo=1.0 added, for tests that must not change it."""
    base = tmp_path_factory.mktemp("shared")
    statedir = base / "state"
    statedir.mkdir()
    hdr = fake_kernel(base)
    run_ckms_cmd(["-s", str(statedir), "add", str(write_pkg(base))])
    return statedir, hdr


@pytest.mark.parametrize("args, code, words", [
    (["build", "foo"], 2, ["'build' needs NAME=VERSION", "'foo'"]),
    (["build", "foo="], 2, ["bad package 'foo='"]),
    (["build", "=1.0"], 2, ["bad package '=1.0'"]),
    (["build", "../x=1"], 2, ["bad package '../x=1'", "invalid package name"]),
    (["install", "foo=1/2", "-d", "{tmp}"], 2, ["bad package 'foo=1/2'", "invalid version"]),
    (["clean", "a/b=1"], 2, ["bad package 'a/b=1'"]),
    (["status", "foo=../1"], 2, ["bad package 'foo=../1'"]),
    (["build"], 2, ["'build' takes one argument"]),
    (["build", "foo=1.0", "bar=1.0"], 2, ["'build' takes one argument"]),
    (["frobnicate", "foo=1.0"], 2, ["unknown command 'frobnicate'"]),
    (["build", "foo=1.0", "-j", "0"], 2, ["-j needs a positive number"]),
    (["build", "foo=1.0", "-k", "../../etc"], 2, ["invalid kernel version '../../etc'"]),
    (["build", "nosuch=1.0", "-k", KVER], 4, ["nosuch=1.0 is not added", "ckms add"]),
    (["remove", "nosuch=1.0"], 4, ["nosuch=1.0 is not added"]),
    (["add", "/nonexistent/dir"], 2, ["/nonexistent/dir is not a directory"]),
    (["build", "foo=1.0", "-s", "{tmp}/no-state"], 4, ["state directory {tmp}/no-state does not exist"]),
    (["status", "-s", "{tmp}/no-state"], 4, ["state directory {tmp}/no-state does not exist"]),
    (["add", ".", "-s", "{tmp}/no-state"], 4, ["state directory {tmp}/no-state does not exist"]),
])
def test_bad_input(shared_tree: tuple[Path, Path], tmp_path: Path,
                   args: List[str], code: int, words: List[str]) -> None:
    statedir, hdr = shared_tree
    before = tree_entries(statedir)
    proc = run_ckms_cmd(["-s", str(statedir), "--hdrdir", str(hdr),
                         *[a.format(tmp=tmp_path) for a in args]], check=code)
    msg = only_error(proc.stderr)
    for word in words:
        assert word.format(tmp=tmp_path) in msg, msg
    assert tree_entries(statedir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created anywhere
