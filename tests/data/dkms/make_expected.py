"""Write expected.json: what DKMS itself reads from each dkms.conf here, per kernel.

Run by hand on a Debian machine with dkms installed and kernel headers:

    python3 tests/data/dkms/make_expected.py [KVER...]   (default: every kernel with headers)

It sources the function definitions of the installed /usr/sbin/dkms (DKMS
3.0.10 on bookworm; nothing of it is copied here) into bash and calls its
``read_conf`` for each file and kernel the way ``dkms build`` does: first with
no module name (as ``dkms add`` of a source tree), then with module and
module_version set to PACKAGE_NAME and PACKAGE_VERSION.  It records, as DKMS
computed them: the module records (built name, built location, destination
after DKMS's distribution override, installed name, strip), whether
BUILD_EXCLUSIVE excludes the kernel, and the make command.  Like DKMS, it
evaluates the files as root: only run it on these known files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DKMS = Path("/usr/sbin/dkms")

# bash: define DKMS's variables and functions (everything before its main program,
# which starts at '# Set a standard path'), then call read_conf as 'dkms build' does.
PROGRAM = r"""
shopt -s extglob
eval "$(sed -n '/^readonly dkms_conf_variables=/,/^# Set a standard path$/p' "$DKMS")"
die() { echo "DIE $*" >&2; exit 9; }
current_os=Linux dkms_tree=/var/lib/dkms source_tree=/usr/src install_tree=/lib/modules
running_distribution=$(distro_version)
module= module_version=
read_conf "$KVER" "$ARCH" "$CONF" >/dev/null 2>&1
module=$PACKAGE_NAME module_version=$PACKAGE_VERSION last_mvka=
read_conf "$KVER" "$ARCH" "$CONF" >/dev/null 2>&1 || echo "FAILED"
for ((i = 0; i < ${#built_module_name[@]}; i++)); do
    printf 'MOD\t%s\t%s\t%s\t%s\t%s\n' "${built_module_name[i]}" "${built_module_location[i]}" \
        "${dest_module_location[i]}" "${dest_module_name[i]}" "${strip[i]}"
done
printf 'NAME\t%s\nVERSION\t%s\nEXCLUDED\t%s\nMAKE\t%s\n' "$PACKAGE_NAME" "$PACKAGE_VERSION" \
    "$build_exclude" "$make_command"
"""


def read(conf: Path, kver: str, arch: str) -> dict[str, object]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DKMS": str(DKMS),
           "CONF": str(conf), "KVER": kver, "ARCH": arch}
    out = subprocess.run(["bash", "--noprofile", "--norc", "-c", PROGRAM], env=env, cwd=conf.parent,
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = {"modules": []}
    for line in out.splitlines():
        kind, *fields = line.split("\t")
        if kind == "MOD":
            result["modules"].append(fields[:4] + [fields[4] != "no"])  # type: ignore[attr-defined]
        elif kind in ("NAME", "VERSION", "MAKE"):
            result[kind.lower()] = fields[0]
        elif kind == "EXCLUDED":
            result["excluded"] = fields[0] == "yes"
        elif kind == "FAILED":
            result["failed"] = True
    return result


def main() -> None:
    kvers = sys.argv[1:] or sorted(k.name for k in Path("/lib/modules").iterdir()
                                   if (k / "build" / ".config").is_file())
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    expected = {conf.parent.name: {kver: read(conf, kver, arch) for kver in kvers}
                for conf in sorted(HERE.glob("*/dkms.conf"))}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'expected.json'}: {len(expected)} files x kernels {', '.join(kvers)}")


if __name__ == "__main__":
    main()
