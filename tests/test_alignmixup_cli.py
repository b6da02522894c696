"""`alignmixup-train`: the README command, the release's own command line, and bad input."""

import csv
import subprocess
import sys
import time

import pytest
import torch
from helpers.data_writers import write_cifar, write_imagefolder

from alignmixup.cli import build_parser, config_from_args, main
from alignmixup.config import TrainConfig
from alignmixup.trainer import Trainer


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
    assert "img/s]" not in proc.stderr  # no progress bar in a log: stderr is a pipe here


def test_release_cifar100_command_runs_unchanged_but_for_paths(tmp_path):
    write_cifar(tmp_path / "data", classes=100, per_batch=150, test=40)  # batches of 128 and 22
    save = tmp_path / "save"
    proc = run_cli("--dataset", "cifar100", "--data_dir", str(tmp_path / "data"), "--save_dir", str(save),
                   "--network", "resnet", "--epochs", "1", "--alpha", "2.0", "--num_classes", "100",
                   "--manualSeed", "8492")
    assert proc.returncode == 0, proc.stderr
    assert "preactresnet18 (width 1.0) on cifar100 with alignmixup" in proc.stdout
    (row,) = rows(save / "metrics.csv")
    assert row["epoch"] == "1" and float(row["lr"]) == pytest.approx(0.1)
    # the release's protocol: all 150 training images, the last partial batch kept, test every epoch, no val
    assert int(row["train_samples"]) == 150 and float(row["test_acc"]) >= 0
    assert not any(c.startswith("val_") or c.startswith("best_val") for c in row)


def test_release_protocol_trains_on_the_whole_split_and_keeps_the_best_test_weights(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--dataset", "digits", "--val-fraction", "0", "--width", "0.125", "--epochs", "3",
                   "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = rows(out / "metrics.csv")
    assert not [c for c in metrics[0] if "val" in c]  # no validation columns at all, let alone fake zeros
    cfg = TrainConfig(dataset="digits", val_fraction=0, width=0.125, threads=2)
    trainer = Trainer(cfg)
    assert all(int(r["train_samples"]) == len(trainer.data.train) for r in metrics)  # nothing carved out
    tests = [float(r["test_acc"]) for r in metrics]
    assert [float(r["best_test_acc"]) for r in metrics] == [max(tests[:i + 1]) for i in range(3)]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + tests.index(max(tests))
    trainer.model_without_ddp.load_state_dict(best["model"])
    assert trainer.evaluate("test")[1] == pytest.approx(max(tests), abs=1e-9)
    assert f"best test_acc {max(tests):.2f}" in proc.stdout and f"final test_acc {tests[-1]:.2f}" in proc.stdout


def test_release_imagenet_command_runs_unchanged_but_for_paths(tmp_path):
    """The release's ImageNet README line has no --dataset. Parsed as it is, it is the release's recipe; run, it
    adds --epochs 1 and, because a CPU test machine cannot hold ResNet-50's activations for a batch of 1024 at
    224 px (tens of GB), a batch of 8 at width 1/16 over a tiny ImageFolder."""
    release = ["--data_dir", str(tmp_path / "imagenet"), "--save_dir", str(tmp_path / "save"), "--mini_imagenet",
               "True", "--subset", "260", "--num_classes", "1000", "--epochs", "300", "--alpha", "2.0",
               "--batch_size", "1024"]
    cfg = config_from_args(build_parser().parse_args(release))
    assert (cfg.dataset, cfg.network, cfg.subset, cfg.batch_size, cfg.epochs, cfg.nesterov) == (
        "imagenet", "resnet50", 260, 1024, 300, True)
    assert (cfg.milestones, cfg.val_fraction, cfg.eval_test) == ([75, 150, 225], 0.0, "every")
    write_imagefolder(tmp_path / "imagenet", classes=3, per_class=6, val=2)
    proc = run_cli(*release[:-6], "--epochs", "1", "--alpha", "2.0", "--batch_size", "8", "--width", "0.0625")
    assert proc.returncode == 0, proc.stderr
    (row,) = rows(tmp_path / "save" / "metrics.csv")
    assert int(row["train_samples"]) == 18 and float(row["test_acc"]) >= 0


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A 1-epoch digits run with a cosine schedule and mixing layers 0,3."""
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(["--dataset", "digits", "--width", "0.125", "--epochs", "1", "--lr-schedule", "cosine",
                 "--mix-layers", "0,3", "--batch-size", "64", "--threads", "2", "--output-dir", str(out)]) == 0
    return out


def test_resume_takes_the_stored_settings(one_epoch_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    assert main(["--resume", "--output-dir", str(run), "--epochs", "2"]) == 0  # a longer run: allowed
    first, second = rows(run / "metrics.csv")
    lr = float(first["lr"])
    assert float(second["lr"]) == pytest.approx(0.5 * lr)  # cosine over 2 epochs, not the step schedule
    stored = torch.load(run / "checkpoint.pt", weights_only=True)["config"]
    assert (stored["lr_schedule"], stored["mix_layers"], stored["epochs"]) == ("cosine", [0, 3], 2)


@pytest.mark.parametrize("flags,named", [
    (["--mix-layers", "0,4"], "--mix-layers"), (["--lr-schedule", "step"], "--lr-schedule"),
    (["--width", "0.5"], "--width"), (["--network", "wrn16_8"], "--network"), (["--eps", "0.5"], "--eps"),
])
def test_resume_refuses_flags_that_contradict_the_run(one_epoch_run, capsys, flags, named):
    before = (one_epoch_run / "checkpoint.pt").read_bytes()
    assert main(["--resume", "--output-dir", str(one_epoch_run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"alignmixup-train: error: argument {named}: the run being resumed"), err
    assert (one_epoch_run / "checkpoint.pt").read_bytes() == before


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
    "batch larger than the training split": (lambda p: ["--batch-size", "100000000"], "--batch-size"),
    "a prefix of a flag": (lambda p: ["--epoch", "3"], "--epoch"),
    "empty validation split": (lambda p: ["--val-fraction", "0.0001"], "--val-fraction"),
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


@pytest.mark.parametrize("cfg", [
    TrainConfig(dataset="digits", width=0.125, seed=5, split_seed=3, mix_layers=[0, 2], epochs=4, threads=1,
                sinkhorn={"eps": 0.03, "cost_scaling": "mean"}, lr_schedule="cosine", eval_test="end", device="cpu"),
    TrainConfig(dataset="cifar10", data_dir="/data/c10", network="wrn16_8", eval_test="every", nesterov=True,
                amp=False, channels_last=False, method="manifold", alpha=0.7, weight_decay=5e-4),
    TrainConfig(dataset="imagenet", data_dir="/d", network="resnet50", nesterov=False, subset=10, milestones=[3],
                gammas=[0.5]),
    TrainConfig(dataset="tinyimagenet", data_dir="/t", val_fraction=0, sinkhorn={"max_iter": 7, "stop": "fixed"}),
])
def test_command_line_rebuilds_the_config(cfg):
    from alignmixup.cli import command_line

    assert config_from_args(build_parser().parse_args(command_line(cfg))) == cfg


def test_a_terminal_gets_a_progress_bar_with_rate_and_time_left(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    main_fd, term_fd = pty.openpty()
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "alignmixup", "--dataset", "digits", "--width", "0.125",
                             "--epochs", "1", "--output-dir", str(tmp_path / "o")], stdout=subprocess.DEVNULL,
                            stderr=term_fd, stdin=subprocess.DEVNULL)
    os.close(term_fd)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the run ended and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=300) == 0
    text = seen.decode(errors="replace")
    assert "epoch 1/1" in text and "img/s" in text and "<" in text  # tqdm: rate, elapsed<remaining


def test_evaluate_a_saved_model_without_training(one_epoch_run, capsys):
    best = one_epoch_run / "best.pt"
    assert main(["--evaluate", str(best), "--evaluations", "calibration,fgsm", "--evaluation-images", "64"]) == 0
    import json

    results = json.loads((one_epoch_run / "best-evaluation.json").read_text())
    (row,) = rows(one_epoch_run / "metrics.csv")
    assert results["test_acc"] == pytest.approx(float(row["best_val_test_acc"]))  # the same weights, the same split
    assert results["val_acc"] == pytest.approx(float(row["best_val_acc"]))
    assert results["test_images"] == 64 and results["test_fgsm_acc"] <= results["test_clean_acc"]
    assert 0 <= results["test_ece"] <= 1 and "test_pgd_acc" not in results
    assert "test_ece" in capsys.readouterr().out
    assert main(["--evaluate", str(best), "--width", "0.5"]) == 2
    assert capsys.readouterr().err.startswith("alignmixup-train: error: argument --width: not with --evaluate")
