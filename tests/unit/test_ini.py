"""The INI reader: configparser's syntax, no interpolation, errors with file:line."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Dict

import pytest

from ckms.errors import ConfigError
from ckms.formats.ini import parse_ini, read_ini

DATA = Path(__file__).resolve().parent.parent / "data" / "ckms"
F = Path("/pkg/ckms.ini")

Values = Dict[str, Dict[str, str]]


def ours(text: str) -> Values:
    ini = parse_ini(text, F)
    return {s: {k: e.value for k, e in sect.entries.items()} for s, sect in ini.sections.items()}


def configparsers(text: str) -> Values:
    """What Python's configparser (CKMS's reader) makes of text, minus its traps."""
    cp = configparser.ConfigParser(interpolation=None, default_section="\0no-default")
    cp.read_string(text)
    # configparser keeps the newline before a value that starts on the next
    # line ("key =\n    value"); ckms drops that leading newline.
    return {s: {k: v.lstrip("\n") for k, v in cp[s].items()} for s in cp.sections()}


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_ini(text, F)
    return str(exc.value)


# ----- syntax ------------------------------------------------------------------

def test_equals_and_colon() -> None:
    assert ours("[a]\nk = v\nj: w\nx=y\nz:w\n") == {"a": {"k": "v", "j": "w", "x": "y", "z": "w"}}


def test_first_delimiter_wins() -> None:
    # as in configparser: the first '=' or ':' splits key from value
    assert ours("[a]\nk: a=b\nj = a:b\n") == {"a": {"k": "a=b", "j": "a:b"}}


def test_keys_are_lowercased_sections_are_not() -> None:
    ini = parse_ini("[Module.Foo]\nPaTh = x\n", F)
    assert list(ini.sections) == ["Module.Foo"]
    entry = ini.sections["Module.Foo"].entries["path"]
    assert (entry.value, entry.name, entry.line) == ("x", "PaTh", 2)


def test_comments() -> None:
    text = "# top\n; also\n[a]\n  # indented comment\nk = v # not a comment\n;x = 1\nj = w ; kept\n"
    assert ours(text) == {"a": {"k": "v # not a comment", "j": "w ; kept"}}


def test_values_are_stripped() -> None:
    assert ours("[a]\nk =    v  w   \nempty =\n") == {"a": {"k": "v  w", "empty": ""}}


def test_continuation_lines() -> None:
    text = ("[hooks]\n"
            "configure =\n"
            "    ./configure \\\n"
            "        --with-linux=x\n"
            "build = make \\\n"
            "\tall\n"
            "post_build = true\n")
    assert ours(text) == {"hooks": {
        "configure": "./configure \\\n--with-linux=x",
        "build": "make \\\nall",
        "post_build": "true",
    }}


def test_blank_lines_inside_a_value_are_kept_trailing_ones_dropped() -> None:
    text = "[a]\nk =\n    one\n\n    two\n\n\nz = 1\n\n"
    assert ours(text) == {"a": {"k": "one\n\ntwo", "z": "1"}}


def test_comment_line_inside_a_value_is_skipped() -> None:
    assert ours("[a]\nk = one\n    # note\n    two\n") == {"a": {"k": "one\ntwo"}}


def test_indented_keys_at_the_same_level_are_separate_keys() -> None:
    assert ours("[a]\n  k = v\n  j = w\n    more\n") == {"a": {"k": "v", "j": "w\nmore"}}


def test_line_numbers() -> None:
    ini = parse_ini("# c\n\n[a]\nk =\n  x\n  y\nj = 2\n[b]\n", F)
    assert ini.sections["a"].line == 3
    assert ini.sections["a"].entries["k"].line == 4
    assert ini.sections["a"].entries["j"].line == 7
    assert ini.sections["b"].line == 8
    assert ini.where("a", "j") == f"{F}:7"
    assert ini.where("b") == f"{F}:8"


@pytest.mark.parametrize("value", ["100%", "%(kernel_version)s", "%%", "a % b", "${CKMS_JOBS}%"])
def test_percent_is_kept_verbatim(value: str) -> None:
    assert ours(f"[a]\nk = {value}\n") == {"a": {"k": value}}


def test_no_keys_copied_between_sections() -> None:
    # configparser's DEFAULT section is a plain section here
    assert ours("[DEFAULT]\nk = 1\n[general]\nname = x\n[a]\nj = 2\n") == {
        "DEFAULT": {"k": "1"}, "general": {"name": "x"}, "a": {"j": "2"}}


@pytest.mark.parametrize("text", [
    "[a]\nk = v\nj: w\n",
    "[a]\nk: a=b\nj = a:b\n",
    "[Sec]\nKeY = V\n",
    "[a]\n# c\n; d\nk = v ; x\n",
    "[a]\nk =\n    one\n\n    two\n\n\nz = 1\n",
    "[a]\nk = one\n    # c\n    two\n",
    "[a]\n  k = v\n  j = w\n    more\n",
    "[a]\nk = v\n\tw\n[b]\nk = 2\n",
    "[a]\nk =\nj = 1\n",
    "[a]\nk = 100% %(x)s\n",
])
def test_same_values_as_configparser(text: str) -> None:
    assert ours(text) == configparsers(text)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.ini")))
def test_real_files_same_values_as_configparser(name: str) -> None:
    text = (DATA / name).read_text()
    assert ours(text) == configparsers(text)


# ----- errors ------------------------------------------------------------------

@pytest.mark.parametrize("text, line, words", [
    ("[a]\nk = 1\nK = 2\n", 3, ["'k'", "already set", "[a]", "line 2"]),
    ("[a]\nk = 1\n[b]\n[a]\n", 4, ["[a]", "already defined", "line 1"]),
    ("k = v\n[a]\n", 1, ["[section]"]),
    ("[a]\njust words\n", 2, ["key = value", "just words"]),
    ("[a]\n= v\n", 2, ["key = value"]),
    ("[a\nk = v\n", 1, ["malformed section header"]),
    ("[a]\nk = v\n[]\n", 3, ["malformed section header"]),
])
def test_malformed_input(text: str, line: int, words: list[str]) -> None:
    msg = error_of(text)
    assert msg.startswith(f"{F}:{line}: "), msg
    for word in words:
        assert word in msg


def test_continuation_without_a_key_is_an_error() -> None:
    msg = error_of("[a]\n    indented without delimiter\n")
    assert msg.startswith(f"{F}:2: ")


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        read_ini(tmp_path / "nope.ini")


def test_read_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[a]\nk = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_ini(path)


def test_read_file_records_its_path(tmp_path: Path) -> None:
    path = tmp_path / "ok.ini"
    path.write_text("[a]\nk = v\n")
    ini = read_ini(path)
    assert ini.path == path
    assert ini.where("a", "k") == f"{path}:2"
