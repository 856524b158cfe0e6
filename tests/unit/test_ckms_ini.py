"""ckms.ini -> Package: real CKMS files load unchanged, CKMS's traps are avoided."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

import pytest

from ckms.errors import ConfigError
from ckms.formats import find_definition, load_definition
from ckms.formats.ckms_ini import load_ckms_ini, parse_bool
from ckms.model import Package, ShellBool
from tests.conftest import RunCkms

DATA = Path(__file__).resolve().parent.parent / "data" / "ckms"


def load(path: Path) -> tuple[Package, List[str]]:
    warnings: List[str] = []
    return load_ckms_ini(path, warnings.append), warnings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ckms.ini"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> tuple[Package, List[str]]:
    return load(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_ckms_ini(path, lambda msg: None)
    msg = str(exc.value)
    assert msg.startswith(str(path)), msg  # every error names the file
    return msg


MINIMAL = "[general]\nname = foo\nversion = 1.0\n[module.foo]\npath = .\ndest = extra\n"


# ----- real files ----------------------------------------------------------------

def test_zfs() -> None:
    pkg, warnings = load(DATA / "zfs.ini")
    assert warnings == []
    assert (pkg.name, pkg.version, pkg.ref) == ("zfs", "2.1.2", "zfs=2.1.2")
    assert (pkg.strip, pkg.initramfs, pkg.make, pkg.autoinstall) == (True, True, "gmake", False)
    assert [m.name for m in pkg.modules] == sorted(
        ["zavl", "znvpair", "zunicode", "zcommon", "zfs", "icp", "zlua", "spl", "zzstd"])
    mods = {m.name: m for m in pkg.modules}
    assert (mods["zavl"].location, mods["zavl"].dest) == ("module/avl", "extra/avl/avl")
    assert (mods["zlua"].location, mods["zlua"].dest) == ("module/lua", "extra/lua/zlua")
    assert mods["zzstd"].dest_relpath == "extra/zstd/zzstd/zzstd.ko"
    assert all(m.strip is None for m in pkg.modules)
    assert set(pkg.hooks) == {"configure", "build", "post_build"}
    assert pkg.hooks["configure"] == (
        "./configure --prefix=/usr --with-config=kernel \\\n"
        '--with-linux="${CKMS_KERNEL_HDRDIR}" \\\n'
        '--with-linux-obj="${CKMS_KERNEL_HDRDIR}"')
    assert pkg.hooks["build"] == "${MAKE} ${CKMS_MAKE_ARGS} -C module/ -j${CKMS_JOBS}"
    assert pkg.hooks["post_build"].splitlines() == [
        "./scripts/dkms.postbuild \\",
        '-n "${CKMS_PACKAGE_NAME}" \\',
        '-v "${CKMS_PACKAGE_VERSION}" \\',
        '-a "${CKMS_KERNEL_MACHINE}" \\',
        '-k "${CKMS_KERNEL_VERSION}" \\',
        '-t "${CKMS_STATEDIR}"',
    ]
    assert pkg.definition == DATA / "zfs.ini"


def test_v4l2loopback() -> None:
    pkg, warnings = load(DATA / "v4l2loopback.ini")
    assert warnings == []
    assert (pkg.name, pkg.version) == ("v4l2loopback", "0.13.2")
    assert (pkg.strip, pkg.initramfs, pkg.make) == (True, False, "gmake")
    (mod,) = pkg.modules
    assert (mod.name, mod.location, mod.dest, mod.dest_relpath) == (
        "v4l2loopback", ".", "extra", "extra/v4l2loopback.ko")
    assert pkg.hooks == {"build": "${MAKE} ${CKMS_MAKE_ARGS} -j${CKMS_JOBS} "
                                  "KERNELRELEASE=${CKMS_KERNEL_VERSION} v4l2loopback"}


def test_nvidia() -> None:
    pkg, warnings = load(DATA / "nvidia.ini")
    assert warnings == []
    assert (pkg.name, pkg.strip, pkg.initramfs) == ("nvidia", False, False)
    assert [m.name for m in pkg.modules] == [
        "nvidia", "nvidia-drm", "nvidia-modeset", "nvidia-peermem", "nvidia-uvm"]
    assert {m.location for m in pkg.modules} == {"kernel"}
    assert {m.dest for m in pkg.modules} == {"kernel/drivers/video"}
    assert [m.dest_relpath for m in pkg.modules][1] == "kernel/drivers/video/nvidia-drm.ko"
    build = pkg.hooks["build"]
    assert 'SYSSRC="${CKMS_KERNEL_HDRDIR}"' in build
    assert build.count("\n") == 2 and build.endswith("\nmodules")


def test_bcachefs() -> None:
    pkg, warnings = load(DATA / "bcachefs.ini")
    assert warnings == []
    assert (pkg.name, pkg.version, pkg.strip, pkg.initramfs) == ("bcachefs", "1.25.2", True, True)
    (mod,) = pkg.modules
    assert (mod.name, mod.location, mod.dest) == ("bcachefs", "src/fs/bcachefs", "kernel/fs/bcachefs")
    assert pkg.hooks["build"].startswith("${MAKE} ${CKMS_MAKE_ARGS} -j${CKMS_JOBS} \\\n")
    assert 'M="$(pwd)/src/fs/bcachefs"' in pkg.hooks["build"]


@pytest.mark.parametrize("name", ["zfs", "v4l2loopback", "nvidia", "bcachefs"])
def test_real_files_add_through_the_cli(name: str, tmp_path: Path, ckms: RunCkms) -> None:
    src = tmp_path / f"{name}-src"
    src.mkdir()
    shutil.copyfile(DATA / f"{name}.ini", src / "ckms.ini")
    proc = ckms("add", str(src))
    assert "warning" not in proc.stderr
    version = load(DATA / f"{name}.ini")[0].version
    assert f"added {name}={version}" in proc.stdout
    status = ckms("plain-status", f"{name}={version}", "-k", "9.9.9-test")
    assert status.stdout.split() == [name, version, "9.9.9-test", status.stdout.split()[3], "added"]


def test_find_definition(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ckms.ini or dkms.conf found"):
        find_definition(tmp_path)
    path = write(tmp_path, MINIMAL)
    assert find_definition(tmp_path) == path
    assert load_definition(path, lambda m: None).name == "foo"


# ----- CKMS's traps ------------------------------------------------------------

def test_general_keys_do_not_leak_into_modules(tmp_path: Path) -> None:
    # configparser with default_section="general" (CKMS) would give every
    # module section the [general] dest and strip
    text = ("[general]\nname = foo\nversion = 1\nstrip = no\ndest = extra\npath = .\n"
            "[module.foo]\npath = src\ndest = updates\n[module.bar]\npath = .\n")
    msg = error_of(tmp_path, text)
    assert "[module.bar]" in msg and "'dest'" in msg and ":10:" in msg


def test_general_strip_is_not_copied_to_the_module(tmp_path: Path) -> None:
    pkg, warnings = load_text(tmp_path, MINIMAL.replace("version = 1.0\n", "version = 1.0\nstrip = no\n"))
    assert pkg.strip is False
    assert pkg.modules[0].strip is None  # follows the package, not a copy of it


def test_general_keys_do_not_leak_into_hooks(tmp_path: Path) -> None:
    pkg, warnings = load_text(tmp_path, MINIMAL + "[hooks]\nbuild = make\n")
    assert pkg.hooks == {"build": "make"}


def test_percent_interpolation_is_not_done_and_warned(tmp_path: Path) -> None:
    hook = "make KVER=%(kernel_version)s -C %(kernel_source)s 100%"
    pkg, warnings = load_text(tmp_path, MINIMAL + f"[hooks]\n\nbuild = {hook}\n")
    assert pkg.hooks["build"] == hook
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path / 'ckms.ini'}:9: ")
    assert "%(...)s" in warnings[0] and "CKMS_" in warnings[0]


def test_plain_percent_is_not_warned(tmp_path: Path) -> None:
    pkg, warnings = load_text(tmp_path, MINIMAL + "[hooks]\nbuild = printf '%s\\n' x > 100%\n")
    assert warnings == []
    assert pkg.hooks["build"] == "printf '%s\\n' x > 100%"


def test_unknown_keys_and_sections_warn_with_file_and_line(tmp_path: Path) -> None:
    text = ("[general]\nname = foo\nversion = 1.0\nflavour = sweet\n"
            "[hooks]\npre_biuld = true\n"
            "[module.foo]\npath = .\ndest = extra\nsign = yes\n"
            "[extras]\nx = 1\n")
    pkg, warnings = load_text(tmp_path, text)
    path = tmp_path / "ckms.ini"
    assert warnings == [
        f"{path}:4: unknown key 'flavour' in [general] ignored",
        f"{path}:6: unknown key 'pre_biuld' in [hooks] ignored",
        f"{path}:10: unknown key 'sign' in [module.foo] ignored",
        f"{path}:11: unknown section [extras] ignored",
    ]
    assert pkg.hooks == {}


def test_all_hooks_and_keys(tmp_path: Path) -> None:
    hooks = ["configure", "pre_build", "build", "post_build",
             "pre_install", "post_install", "pre_remove", "post_remove"]
    text = ("[general]\nname = foo\nversion = 1.0\nmake = make\nautoinstall = yes\n"
            "build_depends = a b\n[hooks]\n" + "".join(f"{h} = echo {h}\n" for h in hooks)
            + "empty =\n" + "[module.foo]\npath = .\ndest = extra\n")
    pkg, warnings = load_text(tmp_path, text.replace("empty =\n", ""))
    assert warnings == []
    assert pkg.hooks == {h: f"echo {h}" for h in hooks}
    assert (pkg.make, pkg.autoinstall, pkg.build_depends) == ("make", True, ("a", "b"))


def test_empty_hook_is_no_hook(tmp_path: Path) -> None:
    pkg, _ = load_text(tmp_path, MINIMAL + "[hooks]\nbuild =\npre_build = true\n")
    assert pkg.hooks == {"pre_build": "true"}


def test_no_build_hook_is_fine(tmp_path: Path) -> None:
    pkg, warnings = load_text(tmp_path, MINIMAL)
    assert pkg.hooks == {} and warnings == []


# ----- booleans ---------------------------------------------------------------------

@pytest.mark.parametrize("word, value", [
    ("yes", True), ("no", False), ("true", True), ("false", False), ("1", True), ("0", False),
    ("Yes", True), ("NO", False), ("TRUE", True), ("False", False),
])
def test_booleans(tmp_path: Path, word: str, value: bool) -> None:
    text = MINIMAL.replace("version = 1.0\n", f"version = 1.0\nstrip = {word}\ninitramfs = {word}\n")
    pkg, _ = load_text(tmp_path, text + f"strip = {word}\n")
    assert pkg.strip is value and pkg.initramfs is value and pkg.modules[0].strip is value


def test_shell_booleans(tmp_path: Path) -> None:
    text = ("[general]\nname = foo\nversion = 1.0\n"
            "strip = sh: test \"$CKMS_KERNEL_VERSION\" != 6.1\n"
            "initramfs = sh:   grep -q zfs /etc/modules  \n"
            "[module.foo]\npath = .\ndest = extra\nstrip = sh: false\n")
    pkg, warnings = load_text(tmp_path, text)
    assert warnings == []
    assert pkg.strip == ShellBool('test "$CKMS_KERNEL_VERSION" != 6.1')
    assert pkg.initramfs == ShellBool("grep -q zfs /etc/modules")
    assert pkg.modules[0].strip == ShellBool("false")


@pytest.mark.parametrize("word", ["maybe", "2", "sh:", "sh:   ", "y es", "ja"])
def test_bad_booleans(tmp_path: Path, word: str) -> None:
    text = MINIMAL.replace("version = 1.0\n", f"version = 1.0\nstrip = {word}\n")
    msg = error_of(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 'ckms.ini'}:4: invalid boolean")
    assert "yes/no" in msg


def test_bad_module_boolean(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "strip = sometimes\n")
    assert msg.startswith(f"{tmp_path / 'ckms.ini'}:7: invalid boolean 'sometimes'")


def test_autoinstall_takes_no_shell(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace("version = 1.0\n", "version = 1.0\nautoinstall = sh: true\n"))
    assert "invalid boolean" in msg and "sh:" not in msg.split("use", 1)[1]


def test_parse_bool_directly() -> None:
    assert parse_bool(" on ", "f:1") is True and parse_bool("off", "f:1") is False
    assert parse_bool("sh: true", "f:1") == ShellBool("true")
    with pytest.raises(ConfigError, match="^f:1: invalid boolean"):
        parse_bool("sh: true", "f:1", allow_shell=False)


# ----- invalid definitions ------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("[hooks]\nbuild = make\n", ["missing [general]"]),
    ("[general]\nversion = 1\n[module.foo]\npath = .\ndest = x\n", ["[general] has no name"]),
    ("[general]\nname = foo\n[module.foo]\npath = .\ndest = x\n", ["[general] has no version"]),
    ("[general]\nname =\nversion = 1\n[module.foo]\npath = .\ndest = x\n", ["[general] has no name"]),
    ("[general]\nname = foo\nversion = 1\n", ["declares no kernel modules"]),
    ("[general]\nname = foo\nversion = 1\n[module.foo]\ndest = x\n", [":4:", "[module.foo]", "'path'"]),
    ("[general]\nname = foo\nversion = 1\n[module.foo]\npath = .\n", [":4:", "[module.foo]", "'dest'"]),
    ("[general]\nname = foo\nversion = 1\n[module.]\npath = .\ndest = x\n", ["module name ''"]),
    ("[general]\nname = foo\nversion = 1\n[module.a/b]\npath = .\ndest = x\n", ["module name 'a/b'"]),
    ("[general]\nname = foo\nversion = 1\n[module.foo]\npath = .\ndest = x\n[module.foo]\n",
     [":7:", "already defined at line 4"]),
    (MINIMAL + "path = again\n", [":7:", "'path' already set"]),
])
def test_invalid_definitions(tmp_path: Path, text: str, words: List[str]) -> None:
    msg = error_of(tmp_path, text)
    for word in words:
        assert word in msg, msg


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "a=b", "-x", "a b", "x" * 129])
def test_hostile_names(tmp_path: Path, name: str) -> None:
    msg = error_of(tmp_path, MINIMAL.replace("name = foo", f"name = {name}"))
    assert f"invalid package name {name!r}" in msg


@pytest.mark.parametrize("version", ["1/2", "../1", "1.0/../..", ".1", "1 2", "1=2"])
def test_hostile_versions(tmp_path: Path, version: str) -> None:
    msg = error_of(tmp_path, MINIMAL.replace("version = 1.0", f"version = {version}"))
    assert f"invalid version {version!r}" in msg


@pytest.mark.parametrize("key, value", [
    ("path", "../x"), ("path", "a/../../x"), ("path", ".."),
    ("dest", "../../x"), ("dest", "extra/../../../etc"), ("dest", ".."),
])
def test_escaping_paths_are_refused(tmp_path: Path, key: str, value: str) -> None:
    text = (MINIMAL.replace("path = .", f"path = {value}") if key == "path"
            else MINIMAL.replace("dest = extra", f"dest = {value}"))
    msg = error_of(tmp_path, text)
    assert "escapes its directory" in msg and repr(value) in msg


@pytest.mark.parametrize("key, value", [
    ("path", "../x"), ("path", "a/../../x"), ("dest", "../../x"), ("dest", "extra/../../../etc"),
])
def test_escaping_paths_never_escape(tmp_path: Path, key: str, value: str) -> None:
    """Whatever check_relpath does with '..', the result stays inside its base."""
    text = (MINIMAL.replace("path = .", f"path = {value}") if key == "path"
            else MINIMAL.replace("dest = extra", f"dest = {value}"))
    try:
        pkg, _ = load_text(tmp_path, text)
    except ConfigError:
        return
    mod = pkg.modules[0]
    for rel in (mod.location, mod.dest, mod.dest_relpath):
        assert not rel.startswith(("/", "..")) and "/../" not in f"/{rel}/"


def test_leading_slash_in_dest_is_tolerated(tmp_path: Path) -> None:
    pkg, _ = load_text(tmp_path, MINIMAL.replace("dest = extra", "dest = /updates/dkms/"))
    assert pkg.modules[0].dest == "updates/dkms"
    assert pkg.modules[0].dest_relpath == "updates/dkms/foo.ko"


def test_modules_may_share_a_dest_dir(tmp_path: Path) -> None:
    text = ("[general]\nname = foo\nversion = 1\n"
            "[module.a]\npath = x\ndest = extra\n[module.b]\npath = y\ndest = extra\n")
    pkg, _ = load_text(tmp_path, text)  # different files in the same dir: fine
    assert [m.dest_relpath for m in pkg.modules] == ["extra/a.ko", "extra/b.ko"]


def test_invalid_definition_through_the_cli(tmp_path: Path, ckms: RunCkms, statedir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ckms.ini").write_text(MINIMAL.replace("name = foo", "name = ../../etc"))
    proc = ckms("add", str(src), check=3)
    assert proc.stderr.count("ckms: error:") == 1
    assert "invalid package name '../../etc'" in proc.stderr
    assert [p.name for p in statedir.iterdir() if p.name != ".lock"] == []
