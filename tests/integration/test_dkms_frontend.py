"""ckms-dkms with real kbuild, real kmod and the real DKMS 3.0.10 side by side.

The seed notes' scenario: examples/dkms_test added, built and installed on
one kernel, matched to a second kernel, uninstalled and removed, with the
status lines checked at each step against what ckms-dkms prints and what the
real ``dkms status`` reads from the same tree.  And the other way round: a
tree built and installed by the real DKMS, read and taken apart by
ckms-dkms.  Everything is staged (--dkmstree, --sourcetree, --installtree
under /var/tmp): nothing touches /lib/modules, and no depmod runs on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from ckms.dkms.status import DIFF
from ckms.kernel import Kernel
from tests.conftest import EXAMPLES, ckms_env, real_kernels

DKMS = Path("/usr/sbin/dkms")
KERNELS = real_kernels()
MACHINE = os.uname().machine

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(len(KERNELS) < 2, reason="needs two kernels with headers"),
              pytest.mark.skipif(not DKMS.is_file(), reason="needs the real dkms as a reference")]


class Staging:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.tree, self.src, self.inst = base / "tree", base / "src", base / "inst"
        for d in (self.tree, self.src, base / "etc"):
            d.mkdir()
        for kver in KERNELS:
            (self.inst / kver).mkdir(parents=True)
        shutil.copytree(EXAMPLES / "dkms_test", self.src / "dkms_test-1.0")

    def where(self) -> List[str]:
        return ["--dkmstree", str(self.tree), "--sourcetree", str(self.src),
                "--installtree", str(self.inst)]

    def ckms_dkms(self, *args: str, code: int = 0) -> str:
        proc = subprocess.run([sys.executable, "-m", "ckms.dkms_cli", *args, *self.where(),
                               "--etcdir", str(self.base / "etc")],
                              env=ckms_env(), capture_output=True, text=True, timeout=900)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == code, f"ckms-dkms {' '.join(args)}: {proc.returncode}\n" \
                                        f"{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def dkms(self, *args: str) -> str:
        """The real DKMS 3.0.10; no signing (it would make /var/lib/dkms/mok.key), no depmod."""
        env = dict(os.environ, sign_file="/nonexistent")
        extra = ["--no-depmod"] if args[0] in ("install", "uninstall", "remove") else []
        proc = subprocess.run([str(DKMS), *args, *extra, *self.where()], env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"dkms {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def status(self) -> List[str]:
        """ckms-dkms's status lines, checked against the real dkms status of the same tree."""
        ours = self.ckms_dkms("status").splitlines()
        theirs = self.dkms("status").splitlines()
        # builds are kept compressed as the kernel's modules are, so DKMS, which compares
        # module/X.ko.xz with the installed file byte by byte, sees no difference either
        assert theirs == ours
        return ours


@pytest.fixture
def staging() -> Iterator[Staging]:
    base = Path(tempfile.mkdtemp(prefix="ckms-dkms-it-", dir="/var/tmp" if os.geteuid() == 0 else None))
    os.chmod(base, 0o755)  # dkms.conf is evaluated as nobody when we are root
    try:
        yield Staging(base)
    finally:
        shutil.rmtree(base)


def real_module_dirs() -> Dict[str, float]:
    """The mtime of each real kernel's modules.dep: no depmod may touch them."""
    return {k: os.stat(f"/lib/modules/{k}/modules.dep").st_mtime for k in KERNELS
            if os.path.exists(f"/lib/modules/{k}/modules.dep")}


def modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def installed_path(staging: Staging, kver: str) -> Path:
    """Where DKMS puts dkms_test on Debian: /updates/dkms, compressed as the kernel's modules."""
    return staging.inst / kver / "updates/dkms" / f"dkms_test.ko{Kernel.find(kver).compression()}"


def test_seed_scenario(staging: Staging) -> None:
    template, target = KERNELS[0], KERNELS[-1]
    depmod_before = real_module_dirs()

    staging.ckms_dkms("add", "-m", "dkms_test", "-v", "1.0")
    assert staging.status() == ["dkms_test/1.0: added"]

    staging.ckms_dkms("build", "-m", "dkms_test", "-v", "1.0", "-k", template)
    assert staging.status() == [f"dkms_test/1.0, {template}, {MACHINE}: built"]

    out = staging.ckms_dkms("install", "-m", "dkms_test", "-v", "1.0", "-k", template)
    assert "Running module version sanity check." in out
    assert staging.status() == [f"dkms_test/1.0, {template}, {MACHINE}: installed"]
    installed = installed_path(staging, template)
    assert modinfo(installed, "vermagic").split()[0] == template

    out = staging.ckms_dkms("match", "--templatekernel", template, "-k", target)
    assert f"Matching modules in kernel: {target} ({MACHINE})" in out
    assert "Module:  dkms_test\nVersion: 1.0" in out
    assert staging.status() == sorted([f"dkms_test/1.0, {template}, {MACHINE}: installed",
                                       f"dkms_test/1.0, {target}, {MACHINE}: installed"])
    matched = installed_path(staging, target)
    assert modinfo(matched, "vermagic").split()[0] == target

    out = staging.ckms_dkms("uninstall", "-m", "dkms_test", "-v", "1.0", "-k", template)
    assert "Before uninstall, this module version was ACTIVE on this kernel." in out
    assert not installed.exists()
    assert staging.status() == sorted([f"dkms_test/1.0, {template}, {MACHINE}: built",
                                       f"dkms_test/1.0, {target}, {MACHINE}: installed"])

    out = staging.ckms_dkms("remove", "-m", "dkms_test", "-v", "1.0", "--all")
    assert "Deleting module dkms_test-1.0 completely from the DKMS tree." in out
    assert staging.status() == []
    assert not list(staging.inst.rglob("*.ko*"))
    assert real_module_dirs() == depmod_before


def test_a_tree_made_by_dkms(staging: Staging) -> None:
    """Real DKMS builds and installs; ckms-dkms reads the same status and takes it apart."""
    depmod_before = real_module_dirs()
    staging.dkms("add", "-m", "dkms_test", "-v", "1.0")
    for kver in (KERNELS[0], KERNELS[-1]):
        staging.dkms("install", "-m", "dkms_test", "-v", "1.0", "-k", kver)
    lines = sorted(f"dkms_test/1.0, {k}, {MACHINE}: installed" for k in (KERNELS[0], KERNELS[-1]))
    assert staging.status() == lines
    staging.ckms_dkms("uninstall", "dkms_test/1.0", "-k", KERNELS[-1])
    assert staging.status() == sorted([f"dkms_test/1.0, {KERNELS[0]}, {MACHINE}: installed",
                                       f"dkms_test/1.0, {KERNELS[-1]}, {MACHINE}: built"])
    assert not list((staging.inst / KERNELS[-1]).rglob("*.ko*"))
    staging.ckms_dkms("remove", "dkms_test/1.0", "--all")
    assert staging.status() == [] and not list(staging.inst.rglob("*.ko*"))
    assert real_module_dirs() == depmod_before


def test_status_of_a_fabricated_tree_matches_dkms(staging: Staging) -> None:
    """Order, filters and suffixes against the real dkms status, without building anything."""
    kernels = KERNELS[:2]
    for name, version in (("zeta", "1.0"), ("alpha", "1.10"), ("alpha", "1.9"), ("alpha-dev", "2")):
        src = staging.src / f"{name}-{version}"
        src.mkdir()
        (src / "dkms.conf").write_text(f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="{version}"\n'
                                       f'BUILT_MODULE_NAME[0]="{name}"\n'
                                       'DEST_MODULE_LOCATION[0]="/updates/dkms"\n')
        (staging.tree / name / version).mkdir(parents=True)
        (staging.tree / name / version / "source").symlink_to(src)
        if version == "1.9":
            continue
        for kver in kernels:
            mod = staging.tree / name / version / kver / MACHINE / "module"
            mod.mkdir(parents=True)
            (mod / f"{name}.ko").write_bytes(f"{name} {version} {kver}".encode())
        if name != "alpha-dev":
            kver = kernels[0]
            (staging.tree / name / f"kernel-{kver}-{MACHINE}").symlink_to(f"{version}/{kver}/{MACHINE}")
            dest = staging.inst / kver / "updates/dkms"
            dest.mkdir(parents=True, exist_ok=True)
            (dest / f"{name}.ko").write_bytes(f"{name} {version} {kver}".encode())
    (staging.inst / kernels[0] / "updates/dkms/zeta.ko").write_bytes(b"changed since")
    (staging.tree / "alpha/original_module" / kernels[1] / MACHINE).mkdir(parents=True)
    for args in ([], ["alpha"], ["-k", kernels[1], "-k", kernels[0]], ["zeta/1.0", "-k", kernels[1]],
                 ["-a", "ppc64"]):
        ours = staging.ckms_dkms("status", *args).splitlines()
        assert ours == staging.dkms("status", *args).splitlines(), args
    assert f"zeta/1.0, {kernels[0]}, {MACHINE}: installed{DIFF}" in staging.ckms_dkms("status")
