"""Wheels for benchmarks/gpu_check.sh on a GPU machine without network (Python 3.12, torch, no Ray): into .whl/.

Downloads (pip, from the package index) ray[train,tune] 2.60.0 and what the check imports beyond torch, for
CPython 3.12 on manylinux x86_64, with their dependencies; keeps Ray, every wheel of at most MAX_WHEEL_MIB, and
leaves out the large compiled ones that a machine with torch is expected to have (numpy, pandas, pyarrow, scipy:
listed at the end; POT's 31 MiB wheel too, so the Sinkhorn benchmark runs without POT there). Ray's wheel loses
ray/jars/ray_dist.jar (32 MB, Java workers only) and the dashboard's JavaScript source maps (browser debugging), and
is re-zipped with a RECORD that lists what it holds. The folder must stay under BUDGET_MIB (what the device tool
carries: 64 MiB with the working tree).

    benchmarks/gpu_wheels.sh            # writes .whl/ (gitignored) and prints what it holds
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = "ray[train,tune]==2.60.0"
# what gpu_check's steps import beyond torch and torchvision (the project's runtime dependencies they use)
REQUIREMENTS = (RAY, "optuna>=4", "safetensors>=0.4", "pytest>=8", "pydantic>=2.6", "pyyaml>=6", "filelock>=3.12",
                "pot>=0.9.4")
TARGET = ("--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--platform", "manylinux2014_x86_64",
          "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:")
MAX_WHEEL_MIB = 5.0
BUDGET_MIB = 60.0
DROP_FROM_RAY = ("ray/jars/ray_dist.jar",)
DROP_SUFFIXES_FROM_RAY = (".js.map",)


def _record_row(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def record_of(z: zipfile.ZipFile) -> str:
    """The wheel's own RECORD (<name>-<version>.dist-info/RECORD at the top; vendored packages have theirs too)."""
    return next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD"))


def strip_wheel(src: Path, dest: Path) -> int:
    """Copy the wheel without the dropped files, with a RECORD rewritten for what is left; returns files dropped."""
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = record_of(zin)
        rows = []
        for info in zin.infolist():
            name = info.filename
            if name == record_name:
                continue
            if name in DROP_FROM_RAY or name.endswith(DROP_SUFFIXES_FROM_RAY):
                dropped += 1
                continue
            data = zin.read(info)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            if not name.endswith("/"):
                rows.append(_record_row(name, data))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([*rows, [record_name, "", ""]])  # RECORD is CSV
        zout.writestr(record_name, text.getvalue())
    return dropped


def check_record(wheel: Path) -> None:
    """Every file of the wheel is in its RECORD with the right hash, and nothing else is (what pip checks)."""
    with zipfile.ZipFile(wheel) as z:
        record_name = record_of(z)
        listed = {row[0]: row for row in csv.reader(io.StringIO(z.read(record_name).decode())) if row}
        files = [n for n in z.namelist() if not n.endswith("/") and n != record_name]
        if set(files) != set(listed) - {record_name}:
            raise SystemExit(f"{wheel.name}: RECORD and contents differ")
        for name in files:
            if listed[name] != _record_row(name, z.read(name)):
                raise SystemExit(f"{wheel.name}: {name}: RECORD hash mismatch")


def main(argv: list[str] | None = None) -> int:
    """Download, filter, strip Ray, check the budget; print the folder's contents."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="alignmixup-wheels-") as tmp:
        downloads = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(downloads), *TARGET,
                        *REQUIREMENTS], check=True)
        shutil.rmtree(args.dest, ignore_errors=True)
        args.dest.mkdir(parents=True)
        left_out = []
        for wheel in sorted(downloads.glob("*.whl")):
            mib = wheel.stat().st_size / 2**20
            if wheel.name.startswith("ray-"):
                dropped = strip_wheel(wheel, args.dest / wheel.name)
                check_record(args.dest / wheel.name)
                print(f"{wheel.name}: {mib:.1f} MiB -> {(args.dest / wheel.name).stat().st_size / 2**20:.1f} MiB "
                      f"({dropped} files dropped: {', '.join(DROP_FROM_RAY)}, *{', *'.join(DROP_SUFFIXES_FROM_RAY)})")
            elif mib <= MAX_WHEEL_MIB:
                shutil.copy2(wheel, args.dest / wheel.name)
            else:
                left_out.append(f"{wheel.name.split('-')[0]} ({mib:.1f} MiB)")
    total = sum(p.stat().st_size for p in args.dest.glob("*.whl")) / 2**20
    print(f"{args.dest}: {len(list(args.dest.glob('*.whl')))} wheels, {total:.1f} MiB (budget {BUDGET_MIB:g} MiB)")
    print(f"left out, expected on the GPU machine: {', '.join(left_out)}")
    if total > BUDGET_MIB:
        print(f"over budget: {total:.1f} MiB > {BUDGET_MIB:g} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
