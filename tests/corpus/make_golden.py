"""Record what the real DKMS does with the corpus packages: tests/corpus/golden/<package>.json.

Run by hand, as root, on a machine with DKMS 3.0.10 (/usr/sbin/dkms) and the
kernel headers the test will use:

    python3 -m tests.corpus.make_golden [PACKAGE...] [--build-all] [--keep]

For each package (default: all of packages.PACKAGES) and each kernel with
headers it records:

- ``config``: DKMS's own reading of the dkms.conf for that kernel: its
  ``read_conf`` function, loaded from /usr/sbin/dkms (the part before the main
  program) and run on the staged source, then the arrays it fills printed
  (built name and location, installed name and location after the
  distribution's override, strip) and whether BUILD_EXCLUSIVE excludes the
  kernel;
- ``build``: ``dkms build`` into a staging tree: the ``.ko`` files in
  ``<dkmstree>/<m>/<v>/<kver>/<arch>/module/``, or "skipped (BUILD_EXCLUSIVE)"
  or "build failed" with the exit code, DKMS's error lines and the end of the
  log; not run for packages.CONFIG_ONLY unless ``--build-all``;
- ``install``: ``dkms install --no-depmod`` into a staging install tree: the
  installed files relative to ``<installtree>/<kver>``.

DKMS only ever sees staging directories (``--dkmstree``, ``--sourcetree``,
``--installtree`` and TMPDIR in a fresh directory under /var/tmp; the MOK key
it generates on Debian goes there too, through ``mok_signing_key`` and
``mok_certificate`` in its environment, which its framework reading keeps when
/etc/dkms/framework.conf does not set them).  DKMS still reads a few real
paths: the kernel headers, ``/lib/modules/<kver>/modules.dep`` (to choose the
compression), /etc/os-release, /etc/dkms/framework.conf.  The script checks
that /var/lib/dkms, /lib/modules, /etc/modprobe.d, /etc/dkms and /boot are
unchanged afterwards and fails if not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from tests.conftest import real_kernels
from tests.corpus import packages
from tests.corpus.packages import Source

Json = Dict[str, Any]
DKMS = "/usr/sbin/dkms"
GOLDEN = Path(__file__).resolve().parent / "golden"
ARCH = os.uname().machine
WATCHED = ("/var/lib/dkms", "/lib/modules", "/etc/modprobe.d", "/etc/dkms", "/boot")
LOG_TAIL = 12  # lines of a failed build's make.log kept, each cut to LOG_WIDTH
LOG_WIDTH = 240
LOG_ERRORS = 3  # distinct compiler errors kept
COMPILER_ERROR = re.compile(r"^\S+:\d+:\d+: (?:fatal )?error: (.*)$", re.M)

# DKMS's read_conf on one dkms.conf for one kernel: the functions of
# /usr/sbin/dkms (everything before its main program) are loaded, the globals
# its main program would set are set, then read_conf fills its arrays.
READ_CONF = r"""
source <(sed -n '/^#### Program Starts Here/q;p' "$DKMS")
current_os=$(uname -s)
dkms_tree=$1 source_tree=$2 install_tree=$3 module=$4 module_version=$5
running_distribution=$(distro_version)
declare -a directive_array=()
read_conf "$6" "$7" "$source_tree/$module-$module_version/dkms.conf" >/dev/null || exit 8
printf 'package\t%s\t%s\n' "$package_name" "$package_version"
printf 'exclude\t%s\n' "$build_exclude"
for ((i = 0; i < ${#built_module_name[@]}; i++)); do
    printf 'module\t%s\t%s\t%s\t%s\t%s\n' "${built_module_name[$i]}" \
        "${built_module_location[$i]}" "${dest_module_name[$i]}" \
        "${dest_module_location[$i]}" "${strip[$i]}"
done
"""


class Staging:
    """The directories DKMS works in for one package."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dkmstree = base / "dkms"
        self.installtree = base / "modules"
        self.tmp = base / "tmp"
        for d in (self.dkmstree, self.installtree, self.tmp):
            d.mkdir()

    def options(self, src: Source) -> List[str]:
        return ["--dkmstree", str(self.dkmstree), "--sourcetree", str(src.sourcetree),
                "--installtree", str(self.installtree)]

    def env(self) -> Dict[str, str]:
        env = dict(os.environ, TMPDIR=str(self.tmp), LC_ALL="C",
                   mok_signing_key=str(self.base / "mok.key"),
                   mok_certificate=str(self.base / "mok.pub"))
        env.pop("MAKEFLAGS", None)
        return env

    def anonymise(self, text: str, src: Source) -> str:
        """Staging paths replaced by the names DKMS gives them."""
        return (text.replace(str(self.dkmstree), "$dkms_tree")
                .replace(str(src.sourcetree), "$source_tree")
                .replace(str(self.installtree), "$install_tree"))


def snapshot() -> Dict[str, Tuple[int, int, str]]:
    """(mtime, size, link target) of everything under the watched real paths."""
    seen: Dict[str, Tuple[int, int, str]] = {}
    for top in WATCHED:
        for dirpath, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                target = os.readlink(path) if os.path.islink(path) else ""
                seen[path] = (st.st_mtime_ns, st.st_size, target)
    return seen


def dkms_made(path: str, modules: Set[str]) -> bool:
    """Whether a change to path can be DKMS's: anything outside /lib/modules, and
    there the modules it handled or an updates/dkms dir (other tests install
    their own modules into /lib/modules meanwhile)."""
    if not path.startswith("/lib/modules/"):
        return True
    return "/updates/dkms" in path or os.path.basename(path).partition(".ko")[0] in modules


def dkms(stage: Staging, src: Source, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [DKMS, *args, "-m", src.name, "-v", src.version, *stage.options(src)]
    print("  $", " ".join(argv), flush=True)
    return subprocess.run(argv, env=stage.env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=stage.base)


def dkms_config(stage: Staging, src: Source, kver: str) -> Json:
    proc = subprocess.run(
        ["bash", "-c", READ_CONF, "read_conf", str(stage.dkmstree), str(src.sourcetree),
         str(stage.installtree), src.name, src.version, kver, ARCH],
        env=dict(stage.env(), DKMS=DKMS), capture_output=True, text=True, check=True,
        stdin=subprocess.DEVNULL, cwd=src.srcdir)
    modules: List[Dict[str, str]] = []
    exclusive = False
    for line in proc.stdout.splitlines():
        kind, *fields = line.split("\t")
        if kind == "package" and fields != [src.name, src.version]:
            raise SystemExit(f"{src.package}: DKMS reads {fields}, the source dir says "
                             f"{src.name}-{src.version}")
        if kind == "exclude":
            exclusive = fields[0] == "yes"
        if kind == "module":
            modules.append(dict(zip(("name", "location", "dest_name", "dest", "strip"), fields)))
    return {"modules": modules, "build_exclusive": exclusive}


def error_lines(proc: subprocess.CompletedProcess[str]) -> List[str]:
    """DKMS's message: from its 'Error!' line on."""
    lines = (proc.stdout + proc.stderr).splitlines()
    for i, line in enumerate(lines):
        if "Error!" in line:
            return [ln for ln in lines[i:] if ln.strip()]
    return lines[-5:]


def compiler_errors(log: str) -> List[str]:
    """The first few distinct compiler errors of a build log, without file and line."""
    found: List[str] = []
    for match in COMPILER_ERROR.finditer(log):
        if match.group(1) not in found:
            found.append(match.group(1))
    return found[:LOG_ERRORS]


def files_under(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def build_and_install(stage: Staging, src: Source, kver: str) -> Json:
    result: Json = {}
    start = time.monotonic()
    build = dkms(stage, src, "build", "-k", kver)
    built = stage.dkmstree / src.name / src.version / kver / ARCH / "module"
    if build.returncode == 0:
        result["build"] = {"result": "built", "exit": 0,
                           "modules": sorted(p.name for p in built.iterdir())}
    elif build.returncode == 77:
        result["build"] = {"result": "skipped (BUILD_EXCLUSIVE)", "exit": 77,
                           "message": [stage.anonymise(ln, src) for ln in error_lines(build)]}
    else:
        log = stage.dkmstree / src.name / src.version / "build" / "make.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        result["build"] = {"result": "build failed", "exit": build.returncode,
                           "message": [stage.anonymise(ln, src) for ln in error_lines(build)],
                           "log": stage.anonymise(str(log), src),
                           "log_errors": compiler_errors(text),
                           "log_tail": [stage.anonymise(ln, src)[:LOG_WIDTH]
                                        for ln in text.splitlines()[-LOG_TAIL:]]}
    print(f"    build: {result['build']['result']} ({build.returncode}) "
          f"in {time.monotonic() - start:.0f} s", flush=True)
    if build.returncode == 0:
        install = dkms(stage, src, "install", "-k", kver, "--no-depmod")
        if install.returncode != 0:
            raise SystemExit(f"{src.package}: dkms install on {kver} exited {install.returncode}:\n"
                             f"{install.stdout}{install.stderr}")
        result["install"] = {"exit": 0, "files": files_under(stage.installtree / kver)}
        print(f"    installed: {' '.join(result['install']['files'])}", flush=True)
    result["status"] = dkms(stage, src, "status", "-k", kver).stdout.splitlines()
    return result


def skip_without(stage: Staging, src: Source, kver: str, option: str) -> Json:
    """dkms build for kver with headers whose .config lacks option."""
    view = packages.headers_without(kver, option, stage.base / f"headers-{kver}")
    build = dkms(stage, src, "build", "-k", kver, "--kernelsourcedir", str(view))
    if build.returncode != 77:
        raise SystemExit(f"{src.package}: dkms build on {kver} without {option} exited "
                         f"{build.returncode}, not 77 (BUILD_EXCLUSIVE):\n{build.stdout}{build.stderr}")
    print(f"    without {option}: skipped (77)", flush=True)
    return {"option": option, "build": {
        "result": "skipped (BUILD_EXCLUSIVE)", "exit": 77,
        "message": [stage.anonymise(ln, src).replace(str(view), "$kernel_source_dir")
                    for ln in error_lines(build)]}}


def check_view(package: str, kver: str, record: Json) -> None:
    """DKMS's reading of the conf (read_conf) must be what its own build and install did."""
    config, build = record["config"], record.get("build")
    if build is None or build["result"] == "build failed":
        return
    if build["result"] == "skipped (BUILD_EXCLUSIVE)":
        seen = {"build_exclusive": True}
        want: Json = {"build_exclusive": config["build_exclusive"]}
    else:
        sfx = build["modules"][0].partition(".ko")[2]
        seen = {"modules": build["modules"], "installed": record["install"]["files"]}
        want = {"modules": sorted(f"{m['dest_name']}.ko{sfx}" for m in config["modules"]),
                "installed": sorted(f"{m['dest'].strip('/')}/{m['dest_name']}.ko{sfx}"
                                    for m in config["modules"])}
    if seen != want:
        raise SystemExit(f"{package} on {kver}: DKMS did {seen}, its read_conf says {want}")


def golden_for(package: str, kernels: List[str], build_all: bool, keep: bool) -> Json:
    base = Path(tempfile.mkdtemp(prefix=f"ckms-golden-{package}-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    try:
        src = packages.source(package, base / "deb")
        stage = Staging(base)
        print(f"{package} {src.deb_version}: {src.name}/{src.version} in {base}", flush=True)
        add = dkms(stage, src, "add")
        if add.returncode != 0:
            raise SystemExit(f"{package}: dkms add exited {add.returncode}:\n{add.stdout}{add.stderr}")
        for kver in kernels:
            (stage.installtree / kver).mkdir()
        out: Json = {}
        for kver in kernels:
            print(f"  kernel {kver}", flush=True)
            record: Json = {"config": dkms_config(stage, src, kver)}
            if package in packages.SKIP_CASES:  # first: DKMS refuses to build twice
                record["without"] = skip_without(stage, src, kver, packages.SKIP_CASES[package])
            if build_all or package not in packages.CONFIG_ONLY:
                record.update(build_and_install(stage, src, kver))
            check_view(package, kver, record)
            out[kver] = record
        return {"package": package, "deb_version": src.deb_version, "name": src.name,
                "version": src.version, "dkms": dkms_version(), "arch": ARCH, "kernels": out}
    finally:
        if keep:
            print(f"  kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def dkms_version() -> str:
    return subprocess.run([DKMS, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="*", default=list(packages.PACKAGES))
    ap.add_argument("-k", "--kernel", action="append", help="default: every kernel with headers")
    ap.add_argument("--build-all", action="store_true",
                    help="build and install the CONFIG_ONLY packages too")
    ap.add_argument("--keep", action="store_true", help="keep the staging dirs")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("make_golden: run as root (dkms install checks for root)", file=sys.stderr)
        return 2
    kernels = args.kernel or real_kernels()
    print(f"{dkms_version()}, kernels {' '.join(kernels)}", flush=True)
    before = snapshot()
    handled: Set[str] = set()
    try:
        for package in args.packages:
            data = golden_for(package, kernels, args.build_all, args.keep)
            handled.update(m["dest_name"] for rec in data["kernels"].values()
                           for m in rec["config"]["modules"])
            path = GOLDEN / f"{package}.json"
            old = json.loads(path.read_text()) if path.is_file() else {}
            if old.get("deb_version") == data["deb_version"]:
                # keep what was recorded for kernels (or builds) not run now
                for kver, rec in old.get("kernels", {}).items():
                    merged = dict(rec, **data["kernels"].get(kver, {}))
                    data["kernels"][kver] = merged
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            print(f"  wrote {path}", flush=True)
    finally:
        clean = unchanged(before, handled)
    return 0 if clean else 1


def unchanged(before: Dict[str, Tuple[int, int, str]], handled: Set[str]) -> bool:
    """Print whether DKMS changed any real path; True when it did not."""
    after = snapshot()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    ours = [p for p in changed if dkms_made(p, handled)]
    if ours:
        print(f"make_golden: real paths changed: {ours[:20]}", file=sys.stderr)
        return False
    print(f"checked: DKMS changed nothing under {', '.join(WATCHED)}"
          f"{f' ({len(changed)} changes by others under /lib/modules)' if changed else ''}")
    return True


if __name__ == "__main__":
    sys.exit(main())
