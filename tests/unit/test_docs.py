"""The manual pages document the code as it is.

Every option of the parser, every command, every ckms.ini key and hook, every
variable a hook gets, every global configuration key (with its default) and
every exit code must be in its page, and the pages must not document keys,
hooks or variables that do not exist.  The examples in the pages must load
without a warning, and the pages must build with scdoc.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from ckms import cli, errors, run
from ckms.build import default_build_command, hook_env
from ckms.config import CKMS_KEYS, DEFAULT_CONFIG, Config, load_config
from ckms.context import Context
from ckms.formats.ckms_ini import GENERAL_KEYS, MODULE_KEYS, package_from_ini
from ckms.formats.ini import parse_ini
from ckms.kernel import COMPRESSIONS, Kernel
from ckms.model import HOOKS, Module, Package
from ckms.tree import STATES, Tree
from ckms.ui import Output

MAN = Path(__file__).resolve().parent.parent.parent / "man"
PAGES = {"ckms.8": "ckms(8)", "ckms.ini.5": "ckms.ini(5)", "ckms-config.ini.5": "ckms-config.ini(5)",
         "ckms-dkms.conf.5": "ckms-dkms.conf(5)", "ckms-dkms.8": "ckms-dkms(8)"}


# ----- reading scdoc sources ---------------------------------------------------
def source(page: str) -> str:
    """The scdoc source of a page, with scdoc's backslash escapes undone."""
    return re.sub(r"\\(.)", r"\1", (MAN / f"{page}.scd").read_text(encoding="utf-8"))


def sections(page: str) -> Dict[str, str]:
    """Top-level sections (``# TITLE``) of a page, by title."""
    out: Dict[str, str] = {}
    title = ""
    for line in source(page).splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            out[title] = ""
        elif title:
            out[title] += line + "\n"
    return out


def section(page: str, title: str) -> str:
    found = sections(page)
    assert title in found, f"{page}.scd has no section '# {title}' (it has: {', '.join(found)})"
    return found[title]


def term_lines(body: str) -> List[str]:
    """The terms of a section's definition lists: a line at column 0 starting in
    bold, followed by its tab-indented description."""
    lines = body.splitlines()
    return [line for line, nxt in zip(lines, lines[1:] + [""])
            if line.startswith("*") and nxt.startswith("\t")]


def first_bold(line: str) -> str:
    match = re.match(r"\*([^*]+)\*", line)
    assert match, line
    return match.group(1)


def all_bold(line: str) -> List[str]:
    return re.findall(r"\*([^*]+)\*", line)


def terms(page: str, title: str) -> List[str]:
    """The first bold word of every term of a section (keys, hooks, codes...)."""
    return [first_bold(line) for line in term_lines(section(page, title))]


def paragraph(page: str, title: str, term: str) -> str:
    """A term's line and its indented description."""
    lines = section(page, title).splitlines()
    for i, line in enumerate(lines):
        if line in term_lines(section(page, title)) and first_bold(line) == term:
            body = [line]
            for nxt in lines[i + 1:]:
                if nxt and not nxt.startswith("\t"):
                    break
                body.append(nxt)
            return "\n".join(body)
    raise AssertionError(f"{page}.scd, {title}: no term *{term}*")


def plain(text: str) -> str:
    """Drop scdoc's bold/underline marks (not underscores inside words)."""
    return re.sub(r"(?<!\w)[*_]|[*_](?!\w)", "", text)


def literal_blocks(text: str) -> List[str]:
    return re.findall(r"^```\n(.*?)^```$", text, re.S | re.M)


# ----- ckms(8) -----------------------------------------------------------------
def test_titles() -> None:
    for page, title in PAGES.items():
        assert source(page).splitlines()[0] == title
        assert "NAME" in sections(page) and "SEE ALSO" in sections(page)


def test_every_option_is_documented() -> None:
    options = section("ckms.8", "OPTIONS")
    flags = [opt for action in cli.make_parser()._actions for opt in action.option_strings]
    assert "--sign-cert" in flags and "-x" in flags  # the parser is what we think it is
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", options), \
            f"option {flag} of ckms.cli.make_parser() is not in ckms.8.scd OPTIONS"


def test_option_details() -> None:
    comp = paragraph("ckms.8", "OPTIONS", "-x, --compression")
    for choice in COMPRESSIONS:
        assert f"*{choice}*" in comp
    assert str(DEFAULT_CONFIG) in paragraph("ckms.8", "OPTIONS", "-C, --config")


def test_every_command_is_documented() -> None:
    documented = terms("ckms.8", "COMMANDS")
    assert documented == list(cli.COMMANDS), "COMMANDS of ckms.8.scd differ from ckms.cli.COMMANDS"
    synopsis = section("ckms.8", "SYNOPSIS")
    for cmd in cli.COMMANDS:
        assert f"*{cmd}*" in synopsis, f"{cmd} missing from the SYNOPSIS"


def test_every_state_is_documented() -> None:
    assert terms("ckms.8", "STATES") == list(STATES)


def error_classes() -> List[type[errors.CkmsError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.CkmsError) and cls.__module__ == errors.__name__]


def test_every_exit_code_is_documented() -> None:
    classes = error_classes()
    assert errors.BuildFailed in classes and errors.CkmsError in classes
    documented = {int(code) for code in terms("ckms.8", "EXIT STATUS")}
    codes = {cls.code for cls in classes}
    missing = {cls.__name__: cls.code for cls in classes if cls.code not in documented}
    assert not missing, f"exit codes not in ckms.8.scd EXIT STATUS: {missing}"
    # 0: success; 130: interrupted (cli.main); nothing documented that the code never returns
    assert documented == codes | {0, 130}


def test_state_tree_layout_matches_tree_py() -> None:
    import ckms.tree

    doc = ckms.tree.__doc__ or ""
    page = section("ckms.8", "STATE TREE")
    for entry in ("source ->", "ckms.ini", "module/*.ko", "log/*.log", "kernel-<kver>-<arch> ->",
                  "original_module/<kver>/<arch>/", ".lock", ".build-", ".failed-<kver>-<arch>/",
                  ".txn-<kver>-<arch>.json"):
        assert entry in doc, f"tree.py no longer mentions {entry!r}: update ckms.8.scd"
        assert entry in page, f"{entry!r} missing from ckms.8.scd STATE TREE"


def test_passthrough_environment_is_documented() -> None:
    env = section("ckms.8", "ENVIRONMENT")
    for var in run.PASSTHROUGH:
        assert f"*{var}*" in env
    assert run.DEFAULT_PATH in env


# ----- ckms.ini(5) -------------------------------------------------------------
def test_every_ckms_ini_key_is_documented() -> None:
    assert terms("ckms.ini.5", "GENERAL SECTION") == list(GENERAL_KEYS)
    assert terms("ckms.ini.5", "HOOKS SECTION") == list(HOOKS)
    assert terms("ckms.ini.5", "MODULE SECTIONS") == list(MODULE_KEYS)


@pytest.fixture
def full_hook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """hook_env for a clang/LLD kernel, with every passed-through variable set."""
    for var in run.PASSTHROUGH:
        if var != "PATH":  # keep the real one: MAKE is looked up in it
            monkeypatch.setenv(var, f"test-{var}")
    monkeypatch.setenv("PATH", os.environ.get("PATH") or run.DEFAULT_PATH)
    hdr = tmp_path / "hdr"
    hdr.mkdir()
    (hdr / ".config").write_text("CONFIG_MODULES=y\nCONFIG_CC_IS_CLANG=y\nCONFIG_LD_IS_LLD=y\n")
    kernel = Kernel(version="6.0.0-doc", machine="x86_64", hdrdir=hdr, moddir=tmp_path / "mod")
    pkg = Package(name="doc", version="1.0", definition=tmp_path / "ckms.ini", make="sh",
                  modules=(Module(name="doc", location=".", dest="extra"),))
    ctx = Context(Config(statedir=tmp_path, destdir=Path("/lib/modules"), make_build_args="V=1"),
                  Tree(tmp_path), Output(quiet=True, stream=io.StringIO()), depmod=True)
    env = hook_env(ctx, pkg, kernel)
    assert env["LD"] == "ld.lld" and env["CKMS_DEPMOD"] == "1"
    return env


def test_every_hook_variable_is_documented(full_hook_env: Dict[str, str]) -> None:
    documented = {name for line in term_lines(section("ckms.ini.5", "HOOK ENVIRONMENT"))
                  for name in all_bold(line)}
    missing = sorted(set(full_hook_env) - documented)
    assert not missing, f"variables set by ckms.build.hook_env missing from ckms.ini.5.scd: {missing}"
    extra = sorted(documented - set(full_hook_env))
    assert not extra, f"ckms.ini.5.scd documents variables hook_env never sets: {extra}"


def test_default_build_is_documented() -> None:
    cmd = default_build_command()
    assert "-j" not in cmd  # the jobs come from ckms's jobserver, through MAKEFLAGS
    assert cmd in literal_blocks(section("ckms.ini.5", "DEFAULT BUILD"))[0]
    assert cmd in plain(section("ckms.8", "BUILDING")).replace("\n  ", " ")


def test_ckms_ini_examples_load_cleanly() -> None:
    blocks = [b for b in literal_blocks(section("ckms.ini.5", "EXAMPLES")) if b.startswith("[general]")]
    assert len(blocks) >= 2
    for block in blocks:
        warnings: List[str] = []
        pkg = package_from_ini(parse_ini(block, Path("ckms.ini.5")), warnings.append)
        assert not warnings, warnings
        assert pkg.modules
    boolean = literal_blocks(section("ckms.ini.5", "BOOLEANS"))[0]
    warnings = []
    package_from_ini(parse_ini(f"[general]\nname = a\nversion = 1\n{boolean}[module.a]\npath = .\n"
                               "dest = extra\n", Path("x")), warnings.append)
    assert not warnings


# ----- ckms-config.ini(5) ------------------------------------------------------
def test_every_config_key_is_documented() -> None:
    assert terms("ckms-config.ini.5", "CKMS SECTION") == list(CKMS_KEYS)


def test_config_defaults_are_documented() -> None:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for key in CKMS_KEYS:
        head = plain(paragraph("ckms-config.ini.5", "CKMS SECTION", key).splitlines()[0])
        f = fields[key]
        if f.default is dataclasses.MISSING:
            factory = f.default_factory
            assert callable(factory) and factory() == (os.cpu_count() or 1), \
                f"no rule for the default of {key}"
            expected = "default: the number of CPUs"
        elif f.default is None:
            expected = "default empty" if key == "compression" else "default none"
        elif f.default is False:
            expected = "default no"
        elif f.default == "":
            expected = "default empty"
        elif isinstance(f.default, float):
            expected = f"default {f.default:g}"
        else:
            expected = f"default {f.default}"
        assert expected in head, f"ckms-config.ini.5.scd: {key}: wanted {expected!r} in {head!r}"


def test_config_example_loads_cleanly(tmp_path: Path) -> None:
    block = next(b for b in literal_blocks(section("ckms-config.ini.5", "EXAMPLES"))
                 if b.startswith("[ckms]"))
    path = tmp_path / "config.ini"
    path.write_text(block)
    warnings: List[str] = []
    cfg = load_config(path, warnings.append, required=True)
    assert not warnings, warnings
    assert cfg.build_env and cfg.sign_key is not None


# ----- building the pages ------------------------------------------------------
@pytest.mark.skipif(shutil.which("scdoc") is None or shutil.which("make") is None,
                    reason="scdoc or make not installed")
def test_pages_build_with_scdoc(tmp_path: Path) -> None:
    man = tmp_path / "man"  # build a copy: the repository stays clean
    shutil.copytree(MAN, man, ignore=shutil.ignore_patterns(*PAGES, "*.tmp"))
    proc = subprocess.run(["make", "-C", str(man)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for page in PAGES:
        text = (man / page).read_text()
        assert text.startswith('.\\" Generated by scdoc'), page
        if shutil.which("groff"):
            lint = subprocess.run(["groff", "-man", "-ww", "-z", str(man / page)],
                                  capture_output=True, text=True)
            assert lint.returncode == 0 and not lint.stderr, f"{page}: {lint.stderr}"
