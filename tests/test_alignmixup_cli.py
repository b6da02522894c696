"""`alignmixup-train`: the README command, the release's own command line, and bad input."""

import csv
import subprocess
import sys
import time

import pytest
from data_writers import write_cifar

from alignmixup.cli import main


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignmixup", *args], capture_output=True, text=True, timeout=timeout)


def rows(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_readme_digits_command_reaches_95_percent(tmp_path):
    # README: alignmixup-train --dataset digits --width 0.25 --epochs 15 --batch-size 64 --lr 0.05 --lr-schedule cosine
    out = tmp_path / "run"
    proc = run_cli("--dataset", "digits", "--width", "0.25", "--epochs", "15", "--batch-size", "64", "--lr", "0.05",
                   "--lr-schedule", "cosine", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = rows(out / "metrics.csv")
    assert len(metrics) == 15 and proc.stdout.count("\nepoch ") == 15
    assert max(float(r["val_acc"]) for r in metrics) >= 95.0
    assert (out / "checkpoint.pt").is_file() and (out / "best.pt").is_file()
    assert float(metrics[-1]["best_val_test_acc"]) > 90.0


def test_release_cifar100_command_runs_unchanged_but_for_paths(tmp_path):
    write_cifar(tmp_path / "data", classes=100, per_batch=300, test=40)
    save = tmp_path / "save"
    proc = run_cli("--dataset", "cifar100", "--data_dir", str(tmp_path / "data"), "--save_dir", str(save),
                   "--network", "resnet", "--epochs", "1", "--alpha", "2.0", "--num_classes", "100",
                   "--manualSeed", "8492")
    assert proc.returncode == 0, proc.stderr
    assert "preactresnet18 (width 1.0) on cifar100 with alignmixup" in proc.stdout
    (row,) = rows(save / "metrics.csv")
    assert row["epoch"] == "1" and float(row["lr"]) == pytest.approx(0.1)
    assert int(row["train_samples"]) == 256  # 270 training images after the 10% val split, batch 128, drop_last


def corrupt_checkpoint(tmp_path) -> list[str]:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return ["--output-dir", str(tmp_path / "out"), "--resume"]


def empty_cifar_dir(tmp_path) -> list[str]:
    (tmp_path / "d" / "cifar-10-batches-py").mkdir(parents=True)
    return ["--dataset", "cifar10", "--data-dir", str(tmp_path / "d")]


BAD = {
    "negative alpha": (lambda p: ["--alpha", "-1"], "--alpha"),
    "eps zero": (lambda p: ["--eps", "0"], "--eps"),
    "missing layer": (lambda p: ["--network", "wideresnet", "--mix-layers", "0,4"], "--mix-layers"),
    "unknown dataset": (lambda p: ["--dataset", "svhn"], "--dataset"),
    "unknown network": (lambda p: ["--network", "vgg"], "--network"),
    "wrong class count": (lambda p: ["--num_classes", "100"], "--num_classes"),
    "empty data dir": (empty_cifar_dir, "cifar-10-batches-py"),
    "corrupt checkpoint": (corrupt_checkpoint, "--resume"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    make_args, named = BAD[case]
    args = make_args(tmp_path)
    if "--output-dir" not in args:
        args += ["--output-dir", str(tmp_path / "o")]
    assert main([*args, "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err and err.startswith("alignmixup-train: error:"), err
    if case != "corrupt checkpoint":
        assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_bad_input_exit_code_and_speed_from_the_shell(tmp_path):
    start = time.perf_counter()
    proc = run_cli("--alpha", "0", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and "--alpha" in proc.stderr and proc.stderr.count("\n") == 1
    assert time.perf_counter() - start < 30


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert main(["--output-dir", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
