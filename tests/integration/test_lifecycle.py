"""Kernel lifecycle on the real installed kernels: autoinstall, reuse, removal.

The packages here fake their build (a hook writes the .ko) so that many runs
over three kernels stay fast; the state logic is what is tested.  One test
builds the real examples with kbuild and installs them into the real module
directory, counting depmod runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest

from tests.conftest import RunCkms, needs_root, owned_tree, real_kernels, recording_hook, run_ckms_cmd

KERNELS = real_kernels()
MACHINE = os.uname().machine
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(len(KERNELS) < 3, reason="needs three kernels with headers")]


def package(base: Path, name: str, build: str = "", general: str = "", log: str = "") -> Path:
    """An autoinstall package whose build hook logs to log and writes NAME.ko."""
    src = base / f"{name}-1.0"
    src.mkdir(parents=True)
    build = build or f"printf fake > {name}.ko"
    if log:
        build = f"echo \"{name} $CKMS_KERNEL_VERSION $MAKEFLAGS\" >> {log}; {build}"
    (src / "ckms.ini").write_text(
        f"[general]\nname = {name}\nversion = 1.0\nstrip = no\nautoinstall = yes\n{general}"
        f"[hooks]\nbuild = {build}\n[module.{name}]\npath = .\ndest = extra\n")
    (src / "main.c").write_text("/* source */\n")
    return src


def builds(log: Path) -> List[str]:
    return log.read_text().splitlines() if log.exists() else []


def table(out: str) -> dict[tuple[str, str], str]:
    """The summary table: (package, kernel) -> result."""
    rows = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2] in KERNELS:
            rows[(parts[0], parts[2])] = parts[3]
    return rows


def test_autoinstall_new_kernels_reuse_and_removal(ckms: RunCkms, tmp_path: Path,
                                                   statedir: Path) -> None:
    log = tmp_path / "builds.log"
    dest = tmp_path / "dest"
    (dest / KERNELS[1] / "ckms-disable" / "gated" / "1.0").mkdir(parents=True)
    for name, kw in [("base", {}), ("user", {"general": "build_depends = base\n"}),
                     ("gated", {}), ("broken", {"build": "echo no compiler here; exit 2"}),
                     ("manual", {"general": "autoinstall = no\n"})]:
        src = package(tmp_path / "src", name, log=str(log), **kw)
        if name == "manual":
            ini = src / "ckms.ini"
            ini.write_text(ini.read_text().replace("autoinstall = yes\n", "", 1))
        ckms("add", str(src))
    dflags = ["-d", str(dest)]

    # the dry run says what would happen and changes nothing
    before = sorted(statedir.rglob("*"))
    out = ckms(*dflags, "autoinstall", "-k", KERNELS[0], "--dry-run").stdout
    assert table(out)[("base", KERNELS[0])] == "would build and install"
    assert sorted(statedir.rglob("*")) == before and not log.exists()

    # the first kernel: all but the broken one; a failure does not stop the rest
    proc = ckms(*dflags, "autoinstall", "-k", KERNELS[0], check=1)
    rows = table(proc.stdout)
    assert rows[("base", KERNELS[0])] == "built and installed"
    assert rows[("user", KERNELS[0])] == "built and installed"
    assert rows[("broken", KERNELS[0])].startswith("failed")
    assert ("manual", KERNELS[0]) not in rows
    assert "no compiler here" in proc.stderr and "build.log" in proc.stdout
    order = [line.split()[0] for line in builds(log)]
    assert order.index("base") < order.index("user")  # BUILD_DEPENDS first
    assert all("--jobserver-auth=" in line for line in builds(log))  # one job budget

    # new kernels appear: only they get builds; the gated one is skipped
    n = len(builds(log))
    rows = table(ckms(*dflags, "autoinstall", "--all-kernels", check=1).stdout)
    new = builds(log)[n:]
    # (a failed build is tried again each time)
    assert not [line for line in new if line.split()[1] == KERNELS[0] and line.split()[0] != "broken"]
    assert rows[("base", KERNELS[0])] == "up to date"
    assert rows[("gated", KERNELS[1])].startswith("skipped: gated=1.0 is disabled")
    assert rows[("gated", KERNELS[2])] == "built and installed"
    for kver in KERNELS:
        for name in ("base", "user"):
            assert list((dest / kver / "extra").glob(f"{name}.ko*")), (name, kver)

    # a second run builds nothing
    (statedir / "broken").rename(tmp_path / "broken-state")  # out of the way
    n = len(builds(log))
    rows = table(ckms(*dflags, "autoinstall", "--all-kernels").stdout)
    assert len(builds(log)) == n
    assert set(rows.values()) <= {"up to date"} | {r for r in rows.values() if r.startswith("skipped")}

    # a changed source (same version: a distribution rebuild) is rebuilt, once per kernel
    (tmp_path / "src/base-1.0/main.c").write_text("/* patched */\n")
    rows = table(ckms(*dflags, "autoinstall", "--all-kernels").stdout)
    rebuilt = [line.split()[0] for line in builds(log)[n:]]
    assert rebuilt == ["base"] * len(KERNELS)
    assert all(rows[("base", k)] == "rebuilt and reinstalled" for k in KERNELS)
    assert rows[("user", KERNELS[0])] == "up to date"

    # --force rebuilds anyway
    n = len(builds(log))
    ckms(*dflags, "autoinstall", "-k", KERNELS[0], "--force")
    assert len(builds(log)) - n == 3  # base, user, gated

    # the kernel goes away: its installs and builds go, the packages stay added
    gone = KERNELS[2]
    out = ckms(*dflags, "kernel-removed", gone).stdout
    assert f"uninstall base=1.0 from {gone}" in out
    assert not list((dest / gone).rglob("*.ko*"))
    status = ckms(*dflags, "status", "base").stdout
    assert f"base, 1.0, {gone}" not in status
    assert f"base, 1.0, {KERNELS[0]}, {MACHINE}: installed" in status
    # a module dir removed behind ckms's back is pruned
    shutil.rmtree(dest / KERNELS[1])
    assert f"would forget the install of base=1.0 on {KERNELS[1]}" in \
        ckms(*dflags, "prune", "--dry-run").stdout
    ckms(*dflags, "prune")
    assert not (dest / KERNELS[1]).exists()
    status = ckms(*dflags, "status").stdout
    assert KERNELS[1] not in status and KERNELS[0] in status


def test_builds_run_in_parallel_within_the_budget(ckms: RunCkms, tmp_path: Path) -> None:
    log = tmp_path / "times.log"
    stamp = f"echo \"$CKMS_PACKAGE_NAME $(date +%s.%N) start\" >> {log}; sleep 1; " \
            f"echo \"$CKMS_PACKAGE_NAME $(date +%s.%N) end\" >> {log}; printf fake > "
    for name in ("p1", "p2"):
        ckms("add", str(package(tmp_path / "src", name, build=stamp + f"{name}.ko")))

    def spans(jobs: str) -> List[tuple[float, float]]:
        log.unlink(missing_ok=True)
        ckms("-d", str(tmp_path / f"dest{jobs}"), "-j", jobs, "autoinstall", "-k", KERNELS[0], "-f")
        times: dict[str, list[float]] = {}
        for line in log.read_text().splitlines():
            name, when, _ = line.split()
            times.setdefault(name, []).append(float(when))
        return sorted((t[0], t[1]) for t in times.values())

    (a0, a1), (b0, b1) = spans("2")
    assert b0 < a1  # two slots: the builds overlap
    (a0, a1), (b0, b1) = spans("1")
    assert b0 >= a1  # one slot: one after the other


def test_missing_headers_is_a_skip(ckms: RunCkms, tmp_path: Path) -> None:
    ckms("add", str(package(tmp_path / "src", "solo")))
    out = ckms("-d", str(tmp_path / "dest"), "autoinstall", "-k", "0.0.1-noheaders").stdout
    assert "skipped: no kernel headers yet (install the package linux-headers-0.0.1-noheaders)" in out


@needs_root
def test_new_kernels_get_one_depmod_each(shared_dir: Path, owner: pwd.struct_passwd) -> None:
    """Real kbuild, real /lib/modules: two packages on two kernels, one depmod per kernel."""
    state, src = owned_tree(shared_dir, owner)
    counter = shared_dir / "depmod.log"
    hook = recording_hook(shared_dir / "depmod-hook", counter, 'exec depmod -a "$1"\n')
    cfg = shared_dir / "config.ini"
    cfg.write_text(f"[ckms]\ndepmod_hook = {hook}\n")
    for name in ("hello", "pair"):
        ini = src / name / "ckms.ini"
        ini.write_text(ini.read_text().replace("[general]\n", "[general]\nautoinstall = yes\n", 1))
    base = ["-C", str(cfg), "-s", str(state), "-q"]
    run_ckms_cmd([*base, "add", str(src / "hello")])
    run_ckms_cmd([*base, "add", str(src / "pair")])
    kernels = KERNELS[-2:]
    try:
        proc = run_ckms_cmd([*base, "autoinstall", *sum((["-k", k] for k in kernels), [])])
        assert sorted(counter.read_text().split()) == sorted(kernels), proc.stdout
        for kver in kernels:
            deps = subprocess.run(["modprobe", "-S", kver, "--show-depends", "pair_user"],
                                  capture_output=True, text=True, check=True).stdout
            assert "pair_core.ko" in deps
        # built as the tree's owner, installed as root
        built = state / "ckms-pair/2.1" / kernels[0] / MACHINE / "module"
        assert built.stat().st_uid == os.stat(state).st_uid != 0
        counter.unlink()
        run_ckms_cmd([*base, "autoinstall", *sum((["-k", k] for k in kernels), [])])
        assert not counter.exists()  # nothing changed: no depmod at all
    finally:
        for kver in kernels:
            for pkg in ("ckms-hello", "ckms-pair"):
                run_ckms_cmd([*base, "-k", kver, "uninstall", pkg], check=None)
    for kver in kernels:
        assert not list((Path("/lib/modules") / kver / "extra").glob("pair_*.ko*"))
