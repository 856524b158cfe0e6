"""End to end: ckms builds and installs ckms-pair (ckms.ini) and dkms_test (a dkms.conf), a
real Debian kernel boots under QEMU, kmod's modprobe loads pair_user, pulling in pair_core as
its dependency, and dkms_test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import EXAMPLES, RunCkms, real_kernels
from tests.vm.qemu import BootResult, boot_with_modules, kernel_image, missing_requirements, newest_kernel

BOOTABLE = [k for k in real_kernels() if os.access(kernel_image(k), os.R_OK)]
KVER = newest_kernel(BOOTABLE)
MISSING = missing_requirements()
if KVER is None:
    MISSING.append("no kernel with both a readable /boot/vmlinuz-K and /lib/modules/K/build "
                   "(apt-get install linux-image-amd64 linux-headers-amd64)")

pytestmark = [pytest.mark.vm, pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING))]

PACKAGE = "ckms-pair=2.1"
MESSAGE = "pair_user: pair_core answered 42"
BOOT_TIMEOUT = 240.0


def proc_modules(text: str) -> Dict[str, List[str]]:
    """/proc/modules lines by module name: name size refcount used-by state address [taints]."""
    return {f[0]: f for f in (line.split() for line in text.splitlines()) if len(f) >= 5}


def explain(result: BootResult) -> str:
    return (f"kernel image {result.kernel_image} (PVH: {result.pvh}), {result.seconds:.1f} s, "
            f"qemu exit {result.returncode}, timed out: {result.timed_out}\n"
            f"--- console (tail)\n{result.console[-6000:]}")


def test_modprobe_ckms_installed_pair(ckms: RunCkms, tmp_path: Path) -> None:
    assert KVER is not None
    modroot = tmp_path / "root" / "lib" / "modules"
    ckms("add", str(EXAMPLES / "pair"))
    ckms("-k", KVER, "build", PACKAGE)
    ckms("-k", KVER, "-d", str(modroot), "install", PACKAGE)
    installed = {p.name.split(".", 1)[0]: p.relative_to(modroot / KVER)
                 for p in (modroot / KVER / "extra" / "pair").iterdir()}
    assert sorted(installed) == ["pair_core", "pair_user"], installed
    # a dkms.conf package, read and built the same way (DEST_MODULE_LOCATION: Debian's updates/dkms)
    ckms("add", str(EXAMPLES / "dkms_test"))
    ckms("-k", KVER, "build", "dkms_test=1.0")
    ckms("-k", KVER, "-d", str(modroot), "install", "dkms_test=1.0")
    assert list((modroot / KVER / "updates" / "dkms").glob("dkms_test.ko*"))

    result = boot_with_modules(KVER, modroot, [
        "/sbin/modprobe -C /etc/modprobe.d -v pair_user",
        "/sbin/modprobe -C /etc/modprobe.d dkms_test",
        "cat /proc/modules",
        "dmesg",
    ], tmp_path / "vm", timeout=BOOT_TIMEOUT)
    why = explain(result)
    assert not result.timed_out, why
    assert result.completed, why
    modprobe, modprobe_dkms, modules, dmesg = result.commands

    # kmod's modprobe resolved the dependency from the depmod index: pair_core first.
    assert modprobe.status == 0, f"{modprobe.output}\n{why}"
    insmods = [line.split()[1] for line in modprobe.output.splitlines() if line.startswith("insmod ")]
    assert insmods == [f"/lib/modules/{KVER}/{installed['pair_core']}",
                       f"/lib/modules/{KVER}/{installed['pair_user']}"], f"{modprobe.output}\n{why}"

    assert modprobe_dkms.status == 0, f"{modprobe_dkms.output}\n{why}"
    loaded = proc_modules(modules.output)
    for name in ("pair_core", "pair_user", "dkms_test"):
        assert name in loaded, f"{name} not in /proc/modules:\n{modules.output}\n{why}"
        assert loaded[name][4] == "Live", f"{name} not Live:\n{modules.output}\n{why}"
    assert "pair_user" in loaded["pair_core"][3].split(","), f"pair_core not used by pair_user:\n{why}"

    assert MESSAGE in dmesg.output, f"{dmesg.output}\n{why}"
    assert "init hlc mod" in dmesg.output, f"dkms_test's message missing:\n{dmesg.output}"
    assert MESSAGE in result.console, why
