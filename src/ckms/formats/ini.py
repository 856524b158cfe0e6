"""A small INI reader that remembers where every key came from.

It accepts the syntax of Python's ``configparser`` with its default settings
(the syntax CKMS files are written in): ``[section]`` headers, ``key = value``
or ``key: value``, keys folded to lower case, full-line ``#``/``;`` comments,
values continued on more-indented lines.  Unlike ``configparser`` it does no
``%`` interpolation (values are often shell code) and never copies keys of
one section into another; and it reports every problem with file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError


@dataclass
class Entry:
    value: str
    line: int
    name: str  # the key as written (keys are looked up folded to lower case)


@dataclass
class Section:
    name: str
    line: int
    entries: Dict[str, Entry] = field(default_factory=dict)


@dataclass
class IniFile:
    path: Path
    sections: Dict[str, Section] = field(default_factory=dict)

    def where(self, section: str, key: Optional[str] = None) -> str:
        sect = self.sections[section]
        line = sect.entries[key].line if key is not None else sect.line
        return f"{self.path}:{line}"


def read_ini(path: Path) -> IniFile:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_ini(text, path)


def parse_ini(text: str, path: Path) -> IniFile:
    ini = IniFile(path)
    cur: Optional[Section] = None
    key: Optional[str] = None  # key whose value may continue on the next lines
    key_indent = 0
    pending_blank: List[str] = []

    def fail(lineno: int, msg: str) -> ConfigError:
        return ConfigError(f"{path}:{lineno}: {msg}")

    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if stripped.startswith(("#", ";")):
            continue
        if not stripped:
            if key is not None:
                pending_blank.append("")
            continue
        if cur is not None and key is not None and indent > key_indent:
            entry = cur.entries[key]
            entry.value = "\n".join([entry.value, *pending_blank, stripped]).lstrip("\n")
            pending_blank = []
            continue
        pending_blank = []
        key = None
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3:
                raise fail(lineno, f"malformed section header {stripped!r}")
            name = stripped[1:-1].strip()
            if name in ini.sections:
                raise fail(lineno, f"section [{name}] already defined at line "
                                   f"{ini.sections[name].line}")
            cur = Section(name, lineno)
            ini.sections[name] = cur
            continue
        if cur is None:
            raise fail(lineno, "expected a [section] header before any key")
        pos = min((p for p in (stripped.find("="), stripped.find(":")) if p >= 0), default=-1)
        if pos <= 0:
            raise fail(lineno, f"expected 'key = value', got {stripped!r}")
        written = stripped[:pos].strip()
        k = written.lower()
        if k in cur.entries:
            raise fail(lineno, f"key {k!r} already set in [{cur.name}] at line "
                               f"{cur.entries[k].line}")
        cur.entries[k] = Entry(stripped[pos + 1:].strip(), lineno, written)
        key, key_indent = k, indent
    return ini
