"""The package model: validated on construction, nothing can escape its directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from ckms.errors import ConfigError, UsageError
from ckms.model import (
    Module,
    Package,
    ShellBool,
    check_kernel_version,
    check_module_name,
    check_relpath,
    parse_package_ref,
)

DEF = Path("/src/ckms.ini")


def mod(name: str = "foo", location: str = ".", dest: str = "extra", dest_name: str = "") -> Module:
    return Module(name=name, location=location, dest=dest, dest_name=dest_name)


# ----- check_relpath ---------------------------------------------------------------

@pytest.mark.parametrize("path, norm", [
    (".", "."),
    ("", "."),
    ("  ", "."),
    ("extra", "extra"),
    ("extra/", "extra"),
    ("/updates/dkms", "updates/dkms"),  # DKMS writes absolute-looking dests
    ("a//b/./c", "a/b/c"),
    ("a/b/../c", "a/c"),
    ("x/..", "."),
    ("kernel/drivers/video", "kernel/drivers/video"),
    ("..foo/bar..", "..foo/bar.."),  # dots inside names are not '..'
])
def test_check_relpath_normalises(path: str, norm: str) -> None:
    assert check_relpath(path, "module dest") == norm


@pytest.mark.parametrize("path", ["a\0b", "a\nb"])
def test_check_relpath_refuses_control_characters(path: str) -> None:
    with pytest.raises(ConfigError, match="invalid module path"):
        check_relpath(path, "module path")


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "../../../../etc", "/../x"])
def test_check_relpath_result_stays_inside(path: str) -> None:
    try:
        norm = check_relpath(path, "module dest")
    except ConfigError:
        return
    assert not norm.startswith(("/", "..")) and "/../" not in f"/{norm}/"


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "../../../../etc"])
def test_check_relpath_refuses_escapes(path: str) -> None:
    with pytest.raises(ConfigError, match="escapes its directory"):
        check_relpath(path, "module dest")


# ----- parse_package_ref --------------------------------------------------------------

@pytest.mark.parametrize("ref, parsed", [
    ("foo=1.0", ("foo", "1.0")),
    ("foo", ("foo", None)),
    ("nvidia-current=550.78-1~deb12u1", ("nvidia-current", "550.78-1~deb12u1")),
    ("acpi_call=1.2.2+git20230512", ("acpi_call", "1.2.2+git20230512")),
    ("zfs=2:2.1.2", ("zfs", "2:2.1.2")),
    ("r8168=8.052.01", ("r8168", "8.052.01")),
])
def test_parse_package_ref(ref: str, parsed: tuple[str, Optional[str]]) -> None:
    assert parse_package_ref(ref) == parsed


@pytest.mark.parametrize("ref", [
    "", "=1.0", "foo=", "../x=1", "a/b=1", ".hidden=1", "foo=1/2", "foo=../1", "foo=1=2",
    "foo bar=1", "foo=1 2", "-f=1", "foo=.1", "x" * 129 + "=1", "foo=" + "1" * 129,
])
def test_parse_package_ref_refuses(ref: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_package_ref(ref)
    msg = str(exc.value)
    assert msg.startswith(f"bad package {ref!r}: ") and msg.endswith("expected NAME=VERSION")
    assert exc.value.code == 2


@pytest.mark.parametrize("kver", ["6.1.0-56-amd64", "6.12.117+deb12-amd64", "9.9.9-test", "5.10.0~rc1"])
def test_kernel_versions(kver: str) -> None:
    assert check_kernel_version(kver) == kver


@pytest.mark.parametrize("kver", ["", "../x", "a/b", ".x", "6.1 x"])
def test_bad_kernel_versions(kver: str) -> None:
    with pytest.raises(UsageError, match="invalid kernel version"):
        check_kernel_version(kver)


@pytest.mark.parametrize("name", ["foo", "nvidia-drm", "_x", "8139too"])
def test_module_names(name: str) -> None:
    assert check_module_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a.b", "-x", "a b", "../x"])
def test_bad_module_names(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid kernel module name"):
        check_module_name(name)


# ----- Module ---------------------------------------------------------------------------

def test_module_normalises_and_defaults() -> None:
    m = mod("foo", location="./src/", dest="/updates/dkms")
    assert (m.location, m.dest, m.dest_name, m.dest_relpath) == (
        "src", "updates/dkms", "foo", "updates/dkms/foo.ko")
    assert mod("foo", dest=".").dest_relpath == "foo.ko"
    assert mod("foo", dest_name="bar").dest_relpath == "extra/bar.ko"


def test_module_bad_dest_name() -> None:
    with pytest.raises(ConfigError, match="'../bar'"):
        mod("foo", dest_name="../bar")


def test_module_is_immutable() -> None:
    m = mod()
    with pytest.raises(AttributeError):
        m.dest = "/etc"  # type: ignore[misc]


# ----- Package ------------------------------------------------------------------------------

def test_package() -> None:
    pkg = Package("foo", "1.0", (mod("a"), mod("b", dest="extra/b")), DEF,
                  strip=ShellBool("true"), hooks={"build": "make"})
    assert pkg.ref == "foo=1.0"
    assert (pkg.make, pkg.initramfs, pkg.autoinstall) == ("gmake", False, False)
    assert pkg.strip == ShellBool("true")


def test_package_without_modules() -> None:
    with pytest.raises(ConfigError, match=f"^{DEF}: package foo declares no kernel modules"):
        Package("foo", "1.0", (), DEF)


def test_duplicate_module_names() -> None:
    with pytest.raises(ConfigError, match=f"^{DEF}: module foo clashes with foo"):
        Package("foo", "1.0", (mod("foo", location="a"), mod("foo", location="b", dest="other")), DEF)


def test_dest_clash() -> None:
    # two modules that would install to the same file
    with pytest.raises(ConfigError, match="module b clashes with a"):
        Package("foo", "1.0", (mod("a", dest_name="x"), mod("b", dest_name="x")), DEF)


def test_dest_clash_after_normalisation() -> None:
    with pytest.raises(ConfigError, match="module b clashes with a"):
        Package("foo", "1.0", (mod("a", dest="extra", dest_name="x"),
                               mod("b", dest="/extra/./", dest_name="x")), DEF)


def test_same_name_in_different_dests_is_still_a_clash() -> None:
    # one build dir holds one NAME.ko per module name
    with pytest.raises(ConfigError, match="clashes"):
        Package("foo", "1.0", (mod("a", dest="x"), mod("a", dest="y")), DEF)


def test_unknown_hook() -> None:
    with pytest.raises(ConfigError, match="unknown hook 'pre_biuld'"):
        Package("foo", "1.0", (mod(),), DEF, hooks={"pre_biuld": "true"})


@pytest.mark.parametrize("name, version", [("../x", "1"), ("foo", "1/2"), ("", "1"), ("foo", "")])
def test_package_refuses_bad_names(name: str, version: str) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        Package(name, version, (mod(),), DEF)
