"""The kernel hooks and systemd files, installed and called the way the system calls them.

contrib/install.sh installs them into a staging root; the Debian hooks then run
under ``run-parts`` exactly as linux-image-KVER's postinst/prerm and
linux-headers-KVER's postinst call them, and the kernel-install plugin under
the real ``kernel-install``.  ``CKMS`` points the hooks at this checkout's
ckms, ``CKMS_CONFIG`` at a configuration whose state tree and module root are
staging directories: nothing here touches /lib/modules or /var/lib/ckms.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from ckms.kernel import Kernel
from tests.conftest import EXAMPLES, ROOT, ckms_env, real_kernels

pytestmark = pytest.mark.integration

KERNELS = real_kernels()
needs_kernel = pytest.mark.skipif(not KERNELS, reason="no kernel headers installed")
NO_HEADERS = "6.99.0-0-nohdr-amd64"  # a kernel whose headers are not installed
ARCH = os.uname().machine
LOG_RE = re.compile(r"^ckms-broken 0\.1 on .*: log in (/\S+)$", re.M)


class Staging:
    """contrib/install.sh's files in a staging root, and a ckms configured for staging dirs."""

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.state = base / "state"
        self.dest = base / "modules"
        self.state.mkdir()
        self.dest.mkdir()
        subprocess.run(["sh", str(ROOT / "contrib" / "install.sh")], check=True,
                       env={**os.environ, "DESTDIR": str(self.root)})
        self.config = base / "config.ini"
        self.config.write_text(f"[ckms]\nstatedir = {self.state}\ndestdir = {self.dest}\n")
        self.ckms = base / "bin" / "ckms"  # what CKMS names: this checkout's ckms
        self.ckms.parent.mkdir()
        self.ckms.write_text(f'#!/bin/sh\nexec {sys.executable} -m ckms "$@"\n')
        self.ckms.chmod(0o755)
        self.env = {**ckms_env(), "CKMS": str(self.ckms), "CKMS_CONFIG": str(self.config)}

    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, env=env or self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=900)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def run_parts(self, hooks: str, kver: str, image: bool = True) -> subprocess.CompletedProcess[str]:
        """As linux-image-KVER's postinst/prerm (KVER IMAGE) or linux-headers' postinst (KVER)."""
        args = [f"--arg={kver}"] + ([f"--arg=/boot/vmlinuz-{kver}"] if image else [])
        return self.run(["run-parts", "--verbose", "--exit-on-error", *args,
                         str(self.root / "etc" / "kernel" / hooks)])

    def ckms_cmd(self, *args: str) -> str:
        proc = self.run([str(self.ckms), "-C", str(self.config), "-L", *args])
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def add(self, src: Path) -> None:
        self.ckms_cmd("add", str(src))

    def module(self, kver: str, name: str = "ckms_hello") -> Path:
        return self.dest / kver / "extra" / f"{name}.ko{Kernel.find(kver).compression()}"

    def kernel_state(self, kver: str) -> List[Path]:
        """Everything the state tree holds for kver: builds, failed builds, install links."""
        return sorted(p for p in self.state.rglob(f"*{kver}*"))


@pytest.fixture
def staging(tmp_path: Path) -> Staging:
    return Staging(tmp_path)


def autoinstall_package(base: Path, broken: bool = False) -> Path:
    """examples/hello marked autoinstall; or a package of the same shape that does not compile."""
    src = base / ("broken" if broken else "hello")
    if not broken:
        shutil.copytree(EXAMPLES / "hello", src)
        ini = (src / "ckms.ini").read_text()
        (src / "ckms.ini").write_text(ini.replace("version = 1.0\n", "version = 1.0\nautoinstall = yes\n"))
        return src
    src.mkdir()
    (src / "ckms.ini").write_text("[general]\nname = ckms-broken\nversion = 0.1\nautoinstall = yes\n\n"
                                  "[module.ckms_broken]\npath = .\ndest = extra\n")
    (src / "Kbuild").write_text("obj-m := ckms_broken.o\n")
    (src / "ckms_broken.c").write_text("#error this package does not build\n")
    return src


# ----- installation ---------------------------------------------------------------------
def test_install_sh_puts_every_file_in_place(staging: Staging) -> None:
    root = staging.root
    for hook in ("postinst.d", "header_postinst.d", "prerm.d"):
        path = root / "etc" / "kernel" / hook / "ckms"
        assert path.is_file() and not path.is_symlink() and os.access(path, os.X_OK), path
    plugin = root / "usr/lib/kernel/install.d/50-ckms.install"
    assert plugin.is_file() and os.access(plugin, os.X_OK)
    unit = root / "usr/lib/systemd/system/ckms-autoinstall.service"
    assert unit.is_file() and unit.stat().st_mode & 0o777 == 0o644
    # run-parts runs only names made of [A-Za-z0-9_-]: the hooks must be among what it would run
    for hook in ("postinst.d", "header_postinst.d", "prerm.d"):
        listed = subprocess.run(["run-parts", "--test", str(root / "etc" / "kernel" / hook)],
                                capture_output=True, text=True, check=True).stdout.split()
        assert listed == [str(root / "etc" / "kernel" / hook / "ckms")]


# ----- the Debian hooks ---------------------------------------------------------------
@needs_kernel
def test_debian_hooks_build_install_report_and_remove(staging: Staging, tmp_path: Path) -> None:
    """linux-image postinst: the good package is built and installed, the broken one reported
    (with its log) without failing the kernel; headers postinst: nothing left to do;
    linux-image prerm: the kernel's builds and installs are gone, the packages stay added."""
    kver = KERNELS[-1]
    staging.add(autoinstall_package(tmp_path))
    staging.add(autoinstall_package(tmp_path, broken=True))

    proc = staging.run_parts("postinst.d", kver)
    assert proc.returncode == 0, proc.stderr
    assert staging.module(kver).is_file()
    status = staging.ckms_cmd("-k", kver, "status").splitlines()
    assert f"ckms-hello, 1.0, {kver}, {ARCH}: installed" in status
    assert any(line.startswith(f"ckms-broken, 0.1, {kver}, {ARCH}: failed") for line in status)
    assert f"ckms: autoinstall for kernel {kver} failed" in proc.stderr
    log = LOG_RE.search(proc.stdout)
    assert log and "this package does not build" in Path(log.group(1)).read_text(), proc.stdout

    built = staging.state / "ckms-hello" / "1.0" / kver / ARCH
    mtime = built.stat().st_mtime_ns
    proc = staging.run_parts("header_postinst.d", kver, image=False)
    assert proc.returncode == 0, proc.stderr
    assert built.stat().st_mtime_ns == mtime  # up to date: not built again
    assert staging.module(kver).is_file()

    proc = staging.run_parts("prerm.d", kver)
    assert proc.returncode == 0, proc.stderr
    assert not list((staging.dest / kver).rglob("*.ko*"))
    assert staging.kernel_state(kver) == []
    status = staging.ckms_cmd("status", "-k", kver).splitlines()
    assert f"ckms-hello, 1.0, {kver}, {ARCH}: added" in status
    assert f"ckms-broken, 0.1, {kver}, {ARCH}: added" in status


def test_debian_hooks_on_a_kernel_without_headers(staging: Staging, tmp_path: Path) -> None:
    """Installing it: a one-line skip; removing it: nothing to do.  Exit 0, nothing changed."""
    staging.add(autoinstall_package(tmp_path))
    before = sorted(staging.state.rglob("*"))
    for hooks, image in (("postinst.d", True), ("header_postinst.d", False)):
        proc = staging.run_parts(hooks, NO_HEADERS, image=image)
        assert proc.returncode == 0, proc.stderr
        skip = [line for line in proc.stderr.splitlines() if line.startswith("ckms:")]
        assert skip == [f"ckms: kernel {NO_HEADERS}: no headers in /lib/modules/{NO_HEADERS}/build "
                        "yet, autoinstall skipped (it runs when they are installed)"], proc.stderr
    proc = staging.run_parts("prerm.d", NO_HEADERS)
    assert proc.returncode == 0 and "ckms:" not in proc.stderr, proc.stderr
    assert sorted(staging.state.rglob("*")) == before
    assert not (staging.dest / NO_HEADERS).exists()


def test_hooks_do_nothing_once_ckms_is_gone(staging: Staging) -> None:
    """The hooks are conffiles: they stay behind when the ckms package is removed."""
    env = {**staging.env, "CKMS": str(staging.root / "no-such-ckms")}
    kver = KERNELS[-1] if KERNELS else NO_HEADERS
    for hooks in ("postinst.d", "prerm.d"):
        proc = staging.run(["run-parts", "--exit-on-error", f"--arg={kver}",
                            str(staging.root / "etc" / "kernel" / hooks)], env=env)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_hook_called_by_another_name_is_a_usage_error(staging: Staging, tmp_path: Path) -> None:
    other = tmp_path / "ckms-hook"
    shutil.copy(staging.root / "etc/kernel/postinst.d/ckms", other)
    for argv in ([str(other), "6.1.0-1-amd64"], [str(other)],
                 [str(staging.root / "usr/lib/kernel/install.d/50-ckms.install"), "add"]):
        proc = staging.run(argv)
        assert proc.returncode == 2 and proc.stderr.startswith("usage: "), (argv, proc.stderr)
    assert staging.kernel_state("6.1.0-1-amd64") == []


# ----- the kernel-install plugin -------------------------------------------------------
@needs_kernel
def test_kernel_install_plugin_adds_and_removes(staging: Staging, tmp_path: Path) -> None:
    kver = KERNELS[0]
    staging.add(autoinstall_package(tmp_path))
    plugin = staging.root / "usr/lib/kernel/install.d/50-ckms.install"
    image = f"/boot/vmlinuz-{kver}"
    kernel_install = shutil.which("kernel-install")
    if kernel_install and Path(image).is_file():
        # the real kernel-install with only our plugin, a scratch boot root and
        # no boot loader layout (it creates no entry directory then)
        env = {**staging.env, "KERNEL_INSTALL_PLUGINS": str(plugin),
               "BOOT_ROOT": str(tmp_path / "boot"), "MACHINE_ID": "0123456789abcdef0123456789abcdef"}
        add = [kernel_install, "add", kver, image]
        remove = [kernel_install, "remove", kver]
    else:
        env = staging.env
        entry = str(tmp_path / "boot" / kver)
        add = [str(plugin), "add", kver, entry, image]
        remove = [str(plugin), "remove", kver, entry]

    proc = staging.run(add, env=env)
    assert proc.returncode == 0, proc.stderr
    assert staging.module(kver).is_file()
    assert f"ckms-hello, 1.0, {kver}, {ARCH}: installed" in staging.ckms_cmd("-k", kver, "status")
    proc = staging.run(remove, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not staging.module(kver).exists()
    assert staging.kernel_state(kver) == []
    assert not (tmp_path / "boot").exists()


def test_kernel_install_plugin_skips_a_kernel_without_headers(staging: Staging) -> None:
    plugin = staging.root / "usr/lib/kernel/install.d/50-ckms.install"
    proc = staging.run([str(plugin), "add", NO_HEADERS, "/boot/entry", "/boot/vmlinuz"])
    assert proc.returncode == 0 and "autoinstall skipped" in proc.stderr, proc.stderr


# ----- the systemd unit ------------------------------------------------------------------
@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_autoinstall_service_verifies(staging: Staging) -> None:
    unit = staging.root / "usr/lib/systemd/system/ckms-autoinstall.service"
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True)
    # systemd looks for "ckms" in its own search path; this checkout's ckms is not installed there
    installed = any(os.access(f"{d}/ckms", os.X_OK)
                    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"))
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if installed or "Command ckms is not executable" not in line]
    assert complaints == [], proc.stderr
    assert proc.returncode == 0 or not installed
    text = unit.read_text()
    assert "Type=oneshot" in text and "ExecStart=ckms -q autoinstall -k %v" in text
    # the condition: the running kernel's headers, the same test as the hooks'
    conditions = [line for line in text.splitlines() if line.startswith("Condition")]
    proc = subprocess.run(["systemd-analyze", "condition", *conditions], capture_output=True, text=True)
    has_headers = Path(f"/lib/modules/{os.uname().release}/build/Makefile").is_file()
    assert (proc.returncode == 0) == has_headers, proc.stdout + proc.stderr
