"""The corpus: real Debian bookworm ``*-dkms`` packages, ckms's dkms front end against DKMS 3.0.10.

For each package and kernel (the oldest and the newest with headers), the
package is fetched and unpacked (never installed, see packages.py), then added,
built and installed by ``python3 -m ckms.dkms_cli`` into a staging tree
(``--dkmstree``, ``--sourcetree``, ``--installtree``), and compared with what
the real DKMS did with the same package and kernel (golden/<package>.json,
written by make_golden.py): the ``.ko`` files of the build and their installed
paths, or a build failure (DKMS's exit code, a log path printed, one of DKMS's
compiler errors in that log), then the ``status`` lines.  A BUILD_EXCLUSIVE
skip (exit 77) on headers whose .config lacks an option the package requires
(packages.SKIP_CASES).  For every package and kernel, also the dkms.conf as
ckms reads it (``formats.load_definition``) against DKMS's own ``read_conf``:
module names, locations, destinations, strip, BUILD_EXCLUSIVE.
openafs-modules-dkms is compared on that reading only (packages.CONFIG_ONLY).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from ckms.formats import LoadOptions, load_definition
from ckms.kernel import Kernel
from tests.conftest import ckms_env, real_kernels
from tests.corpus import packages
from tests.corpus.packages import Source

GOLDEN = Path(__file__).resolve().parent / "golden"
ARCH = os.uname().machine
_KERNELS = real_kernels()
# both ends of what is installed: the oldest and the newest kernel with headers
KERNELS = sorted({_KERNELS[0], _KERNELS[-1]}) if _KERNELS else []

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not KERNELS, reason="no kernel headers installed"),
    pytest.mark.skipif(not (shutil.which("apt-get") and shutil.which("dpkg-deb")),
                       reason="needs apt-get and dpkg-deb (Debian)"),
]


def golden(package: str) -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads((GOLDEN / f"{package}.json").read_text())
    return data


def cases(which: Tuple[str, ...]) -> List[Any]:
    """(package, kver) pairs; slow packages marked so."""
    marks = {p: [pytest.mark.slow] if p in packages.SLOW else [] for p in which}
    return [pytest.param(p, k, marks=marks[p], id=f"{p}-{k}") for p in which for k in KERNELS]


def golden_kernel(package: str, kver: str) -> Dict[str, Any]:
    data = golden(package)
    if data["arch"] != ARCH:
        pytest.skip(f"golden/{package}.json is for {data['arch']}, this is {ARCH}")
    if kver not in data["kernels"]:
        pytest.skip(f"golden/{package}.json has nothing for kernel {kver}: "
                    f"run python3 -m tests.corpus.make_golden {package}")
    record: Dict[str, Any] = data["kernels"][kver]
    return record


class Staging:
    """A package unpacked into a world-readable scratch dir, with DKMS's three trees."""

    def __init__(self, base: Path, package: str) -> None:
        data = golden(package)
        try:
            self.src: Source = packages.source(package, base / "deb", data["deb_version"])
        except packages.FetchError as exc:
            pytest.fail(f"{exc}\n(golden/{package}.json was made from {package} "
                        f"{data['deb_version']}: if the archive moved on, run make_golden.py)")
        assert (self.src.name, self.src.version) == (data["name"], data["version"])
        self.dkmstree = base / "dkms"
        self.installtree = base / "modules"
        self.dkmstree.mkdir()
        self.installtree.mkdir()
        for kver in KERNELS:
            (self.installtree / kver).mkdir()  # DKMS installs only into an existing kernel dir

    def options(self) -> List[str]:
        return ["--dkmstree", str(self.dkmstree), "--sourcetree", str(self.src.sourcetree),
                "--installtree", str(self.installtree)]

    def dkms(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ckms-dkms ARGS`` on the staging trees."""
        proc = subprocess.run([sys.executable, "-m", "ckms.dkms_cli", *args, *self.options()],
                              env=ckms_env(), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=1200)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def built(self, kver: str) -> Path:
        return self.dkmstree / self.src.name / self.src.version / kver / ARCH / "module"


@pytest.fixture
def staged(shared_dir: Path, request: pytest.FixtureRequest) -> Staging:
    package = request.node.callspec.params["package"]
    return Staging(shared_dir, package)


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def real_dkms_state(kver: str) -> Tuple[List[str], bool]:
    """What a front end on staging trees must not touch: /var/lib/dkms, the kernel's updates/dkms."""
    var = Path("/var/lib/dkms")
    return (sorted(os.listdir(var)) if var.is_dir() else [],
            (Path("/lib/modules") / kver / "updates" / "dkms").exists())


def printed_logs(output: str, under: Path) -> List[Path]:
    """The logs (``*.log`` files, ``log`` dirs) under `under` that the output names."""
    found = []
    for word in re.findall(r"(/[^\s'\"():,]+)", output):
        path = Path(word.rstrip("."))
        if (str(path).startswith(str(under)) and path.exists() and path not in found
                and (path.name == "log" or path.name.endswith(".log"))):
            found.append(path)
    return found


def log_text(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return "".join(p.read_text(errors="replace") for p in files)


@pytest.mark.parametrize(("package", "kver"),
                         cases(tuple(p for p in packages.PACKAGES if p not in packages.CONFIG_ONLY)))
def test_build_and_install_as_dkms_does(staged: Staging, package: str, kver: str) -> None:
    want = golden_kernel(package, kver)
    src = staged.src
    before = real_dkms_state(kver)
    add = staged.dkms("add", "-m", src.name, "-v", src.version)
    assert add.returncode == 0, show(add)

    build = staged.dkms("build", f"{src.name}/{src.version}", "-k", kver)
    result = want["build"]
    assert build.returncode == result["exit"], \
        f"DKMS: {result['result']} ({result['exit']}), ckms-dkms: {show(build)}"
    if result["result"] == "built":
        assert sorted(p.name for p in staged.built(kver).iterdir()) == result["modules"]
        # DKMS needed --no-depmod not to run depmod on the real /lib/modules/KVER;
        # ckms never runs it for a module dir other than /lib/modules
        install = staged.dkms("install", f"{src.name}/{src.version}", "-k", kver)
        assert install.returncode == 0, show(install)
        assert "depmod" not in install.stdout + install.stderr, show(install)
        kdir = staged.installtree / kver
        installed = sorted(str(p.relative_to(kdir)) for p in kdir.rglob("*") if not p.is_dir())
        assert installed == want["install"]["files"]
    elif result["result"] == "build failed":
        logs = printed_logs(build.stdout + build.stderr, staged.dkmstree)
        assert logs, f"no log path under {staged.dkmstree} printed: {show(build)}"
        text = "".join(log_text(p) for p in logs)
        # the same compiler error (which of several comes first varies with make -j)
        assert not result["log_errors"] or any(e in text for e in result["log_errors"]), \
            f"DKMS's log has {result['log_errors']}, ckms-dkms's {logs} have none of them"
        assert not staged.built(kver).exists()
    else:  # skipped (BUILD_EXCLUSIVE): nothing built
        assert not staged.built(kver).exists()
    status = staged.dkms("status", "-m", src.name, "-v", src.version, "-k", kver)
    assert status.stdout.splitlines() == want["status"], show(status)
    assert real_dkms_state(kver) == before


@pytest.mark.parametrize(("package", "kver"), cases(tuple(packages.SKIP_CASES)))
def test_build_exclusive_skip_as_dkms_does(staged: Staging, shared_dir: Path, package: str,
                                           kver: str) -> None:
    want = golden_kernel(package, kver)["without"]
    src = staged.src
    headers = packages.headers_without(kver, want["option"], shared_dir / "headers")
    assert staged.dkms("add", "-m", src.name, "-v", src.version).returncode == 0
    build = staged.dkms("build", f"{src.name}/{src.version}", "-k", kver,
                        "--kernelsourcedir", str(headers))
    assert build.returncode == want["build"]["exit"] == 77, show(build)
    assert not staged.built(kver).exists()


@pytest.mark.parametrize(("package", "kver"), cases(packages.PACKAGES))
def test_dkms_conf_read_as_dkms_reads_it(staged: Staging, package: str, kver: str) -> None:
    want = golden_kernel(package, kver)["config"]
    kernel = Kernel.find(kver)
    warnings: List[str] = []
    pkg = load_definition(staged.src.dkms_conf, warnings.append, LoadOptions(
        kernel=kernel, dkms_tree=staged.dkmstree, source_tree=staged.src.sourcetree,
        install_tree=staged.installtree))
    assert (pkg.name, pkg.version) == (staged.src.name, staged.src.version)
    ours = [(m.name, m.location, m.dest_name, m.dest,
             (pkg.strip if m.strip is None else m.strip) is True) for m in pkg.modules]
    dkms = [(m["name"], posixpath.normpath(m["location"] or "."), m["dest_name"],
             posixpath.normpath(m["dest"].lstrip("/") or "."), m["strip"] == "yes")
            for m in want["modules"]]
    assert sorted(ours) == sorted(dkms)
    excluded = pkg.exclusive.why_not(kver, kernel.machine, kernel.config)
    assert (excluded is not None) == want["build_exclusive"], excluded
