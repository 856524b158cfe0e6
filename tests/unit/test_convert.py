"""ckms convert: a dkms.conf -> an equivalent ckms.ini, and the list of what is lost."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

from ckms.errors import ConfigError
from ckms.formats import LoadOptions
from ckms.formats.ckms_ini import load_ckms_ini, package_from_ini
from ckms.formats.convert import PROBE_VERSION, convert, to_ckms_ini
from ckms.formats.dkms_conf import read_dkms_conf
from ckms.formats.ini import parse_ini
from ckms.kernel import Kernel
from ckms.model import Package
from tests.unit.test_dkms_conf import DATA, KVER, MINIMAL, fake_kernel, make_world, options, write

world_fixture = pytest.fixture(name="world")(make_world)

CKMS_DATA = DATA.parent / "ckms"
CONFIG = "CONFIG_MODULES=y\nCONFIG_ACPI=y\nCONFIG_VIDEO_DEV=m\nCONFIG_PCI=y\nCONFIG_USB=y\n"


def shape(pkg: Package) -> Tuple[object, ...]:
    """What a ckms.ini can carry of a package, for comparing."""
    return (pkg.name, pkg.version, pkg.make, pkg.strip, pkg.autoinstall, pkg.build_depends,
            [(m.name, m.location, m.dest, pkg.strip if m.strip is None else m.strip)
             for m in sorted(pkg.modules, key=lambda m: m.name)],
            dict(pkg.hooks))


def load_back(text: str) -> Package:
    warnings: List[str] = []
    pkg = package_from_ini(parse_ini(text, Path("converted.ini")), warnings.append)
    assert warnings == []
    return pkg


def convert_text(world: Path, text: str, kernel: Kernel | None = None) -> Tuple[str, List[str]]:
    return convert(write(world, text), lambda m: None, options(world, kernel))


@pytest.mark.parametrize("pkgdir", sorted(p.parent.name for p in DATA.glob("*/dkms.conf")))
def test_real_files_convert_to_an_equivalent_ckms_ini(world: Path, pkgdir: str) -> None:
    shutil.copytree(DATA / pkgdir, world / "src")
    path = world / "src" / "dkms.conf"
    opts = options(world, fake_kernel(world, config=CONFIG))
    conf = read_dkms_conf(path, lambda m: None, opts)
    text, _ = convert(path, lambda m: None, opts)
    assert text.startswith(f"# converted by ckms convert from {path} for kernel {KVER}\n")
    assert shape(load_back(text)) == shape(conf.package)


@pytest.mark.parametrize("pkgdir,lost", [
    ("tp-smapi-dkms", []),
    ("falcosecurity-scap-dkms", []),
    ("xtables-addons-dkms", []),
    ("rtpengine-kernel-dkms", []),
    ("v4l2loopback-dkms", []),
    ("acpi-call-dkms", ["BUILD_EXCLUSIVE (config=('CONFIG_ACPI',)): ckms.ini cannot restrict"]),
    ("dm-writeboost-dkms", ["BUILD_EXCLUSIVE (kernel_min='3.9')"]),
    ("openafs-modules-dkms", ["BUILD_EXCLUSIVE (config=('!CONFIG_PREEMPT_RT',))",
                              "[hooks] build depends on the kernel: '...l-probing "
                              "--with-afs-sysname=amd64_linux26"]),
    ("lttng-modules-dkms", ["the modules depend on the kernel: only for kernel 6.1.0-99-amd64: "
                            "lttng-probe-block",
                            f"the modules depend on the kernel: only for kernel {PROBE_VERSION}: "
                            "lttng-probe-kmem"]),
    ("iptables-netflow-dkms", []),
])
def test_what_real_files_lose(world: Path, pkgdir: str, lost: List[str]) -> None:
    kernel = fake_kernel(world, config=CONFIG + "CONFIG_BLOCK=y\nCONFIG_EVENT_TRACING=y\n")
    _, problems = convert_text(world, (DATA / pkgdir / "dkms.conf").read_text(), kernel)
    assert len(problems) == len(lost), problems
    for problem, start in zip(problems, lost):
        assert problem.startswith(start), problem


def test_build_exclusive_that_depends_on_the_kernel(world: Path) -> None:
    """v4l2loopback excludes a kernel without V4L2: not static, even if the target has it."""
    _, problems = convert_text(world, (DATA / "v4l2loopback-dkms" / "dkms.conf").read_text(),
                               fake_kernel(world, config="CONFIG_MODULES=y\n"))
    assert problems[0].startswith("BUILD_EXCLUSIVE (kernel='REQUIRES CONFIG_VIDEO_DEV')")
    assert problems[1] == ("BUILD_EXCLUSIVE depends on the kernel: kernel='REQUIRES CONFIG_VIDEO_DEV' "
                           f"for kernel {KVER}, none for kernel {PROBE_VERSION}")


def test_choices_and_what_ckms_ini_cannot_say(world: Path) -> None:
    text, problems = convert_text(world, MINIMAL + """
MAKE[0]="make all"
MAKE[1]="make new"
MAKE_MATCH[1]="^7\\."
PATCH[0]=fix.patch
PATCH[1]=old.patch
PATCH_MATCH[1]="^4\\."
DEST_MODULE_NAME[0]=bar
OBSOLETE_BY=9.0
BUILD_DEPENDS_REBUILD=yes
BUILD_EXCLUSIVE_ARCH[1]=x86_64
""")
    assert problems == [
        "per-module BUILD_EXCLUSIVE_*[#]: the modules are those for kernel 6.1.0-99-amd64",
        "MAKE_MATCH: the build command is the one chosen for kernel 6.1.0-99-amd64",
        "PATCH_MATCH: the patches are those chosen for kernel 6.1.0-99-amd64",
        "OBSOLETE_BY='9.0': ckms.ini has no equivalent",
        "BUILD_DEPENDS_REBUILD: ckms.ini has no equivalent",
        "DEST_MODULE_NAME: foo.ko is installed as bar.ko by DKMS; ckms.ini installs it as foo.ko",
    ]
    pkg = load_back(text)
    assert pkg.hooks["pre_build"] == "patch -p1 -N -i ./patches/fix.patch || exit"
    assert "make KERNELRELEASE=${CKMS_KERNEL_VERSION} all" in pkg.hooks["build"]


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch is not installed")
def test_patches_become_a_pre_build_hook_that_applies_them(world: Path) -> None:
    src = world / "src"
    (src / "patches").mkdir(parents=True)
    (src / "hello.c").write_text("int x = 1;\n")
    (src / "patches" / "a.patch").write_text(
        "--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-int x = 1;\n+int x = 2;\n")
    (src / "run.sh").write_text("#!/bin/sh\necho pre_build ran >> log\n")
    (src / "run.sh").chmod(0o755)
    text, _ = convert_text(world, MINIMAL + "PATCH[0]=a.patch\nPRE_BUILD=run.sh\n")
    proc = subprocess.run(["/bin/sh", "-c", load_back(text).hooks["pre_build"]], cwd=src,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (src / "hello.c").read_text() == "int x = 2;\n"
    assert (src / "log").read_text() == "pre_build ran\n"


def test_multi_line_values_that_ckms_ini_cannot_hold(world: Path) -> None:
    text, problems = convert_text(world, MINIMAL + 'POST_INSTALL="post.sh\n  --indented\n#notacomment"\n')
    assert problems == ["[hooks] post_install cannot be written exactly in ckms.ini (it strips "
                        "values, and the indentation and the comment lines of a multi-line value)"]
    load_back(text)  # still a valid file


def test_a_file_that_fails_for_other_kernels(world: Path) -> None:
    _, problems = convert_text(world, MINIMAL + "[ -f $kernel_source_dir/.config ] || exit 1\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"it depends on the kernel: read for kernel {PROBE_VERSION} it fails:")


def test_probes_given(world: Path) -> None:
    other = fake_kernel(world, "5.10.0-9-amd64")
    _, problems = convert(write(world, MINIMAL + 'MAKE="make V=$kernelver"\n'), lambda m: None,
                          options(world), probes=[other])
    assert problems == []  # the version is written ${CKMS_KERNEL_VERSION}: static
    _, problems = convert(write(world, MINIMAL + 'MAKE="make V=${kernelver%%.*}"\n'),
                          lambda m: None, options(world), probes=[other])
    assert len(problems) == 1 and problems[0].startswith("[hooks] build depends on the kernel: ")
    assert "V=6" in problems[0] and "V=5" in problems[0] and "5.10.0-9-amd64" in problems[0]


@pytest.mark.parametrize("ini", sorted(p.name for p in CKMS_DATA.glob("*.ini")))
def test_a_ckms_ini_package_converts_to_itself(ini: str) -> None:
    pkg = load_ckms_ini(CKMS_DATA / ini, lambda m: None)
    text, problems = to_ckms_ini(pkg)
    assert problems == []
    assert shape(load_back(text)) == shape(pkg)


def test_to_ckms_ini_without_the_raw_directives(world: Path) -> None:
    conf = read_dkms_conf(write(world, MINIMAL + "MAKE[1]=x\nMAKE_MATCH[1]=.\nOBSOLETE_BY=9\n"),
                          lambda m: None, options(world))
    _, problems = to_ckms_ini(conf.package)  # knows the package only: MAKE_MATCH is not seen
    assert problems == ["OBSOLETE_BY='9': ckms.ini has no equivalent"]


def test_convert_needs_a_valid_file(world: Path) -> None:
    with pytest.raises(ConfigError):
        convert(write(world, "PACKAGE_NAME=x\n"), lambda m: None, LoadOptions(
            kernel=fake_kernel(world), os_root=world / "os" / "debian"))
