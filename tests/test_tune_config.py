"""Sweep configuration: presets, search space as data, and bad configs that exit 2 before any Ray work."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.sweeps import REPO, SMALL_SWEEP

from alignmixup.console import ConfigError
from tune_jobs import cli, config, preflight, presets

# The CLI's main() for each argv in one subprocess (one torch import); it reports whether Ray was imported.
CASES_SCRIPT = """
import contextlib, io, json, sys, time
from tune_jobs.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append({"rc": rc, "stderr": err.getvalue(), "seconds": time.monotonic() - start})
print(json.dumps({"results": out, "ray_imported": "ray" in sys.modules}))
"""


def sweep_with(change: dict[str, Any]) -> dict[str, Any]:
    """SMALL_SWEEP with nested keys replaced ({"search": {"alpha": -1}} changes only search.alpha; None deletes)."""
    out = copy.deepcopy(SMALL_SWEEP)
    for key, value in change.items():
        if value is None:
            del out[key]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown key": ({"shedule": {"kind": "fifo"}}, "shedule: unknown key (did you mean scheduler?)"),
    "misspelt required key": ({"schedular": SMALL_SWEEP["scheduler"], "scheduler": None},
                              "schedular: unknown key (did you mean scheduler?)"),
    "unknown train key": ({"train": {"epoch": 3}}, "train.epoch: unknown key (did you mean epochs?)"),
    "unknown scheduler key": ({"scheduler": {"grace": 3}}, "scheduler.grace: unknown key (did you mean grace_period?)"),
    "alpha <= 0": ({"search": {"alpha": -1.0}}, "search.alpha: Input should be greater than 0 (got -1.0)"),
    "alpha = 0 in a choice": ({"search": {"alpha": {"choice": [1.0, 0.0]}}}, "search.alpha: Input should be greater"),
    "empty choice": ({"search": {"mix_layers": {"choice": []}}}, "search.mix_layers.choice: needs a non-empty list"),
    "layer the network lacks": (
        {"train": {"network": "wrn16_8"}, "search": {"mix_layers": {"choice": ["0,3", "0,4"]}}},
        "search.mix_layers: wrn16_8 has layers 0..3 (0 = input), got 4",
    ),
    "num_workers 0": (
        {"scaling": {"num_workers": 0}}, "scaling.num_workers: Input should be greater than or equal to 1"
    ),
    "uniform over layers": (
        {"search": {"mix_layers": {"uniform": [0, 4]}}}, "search.mix_layers: uniform needs a numeric"
    ),
    "bad eps range": ({"search": {"eps": {"loguniform": [1.0, 0.1]}}}, "search.eps.loguniform: low must be < high"),
    "unknown scheduler": ({"scheduler": {"kind": "hyperband"}}, "scheduler: Input tag 'hyperband'"),
    "metric not reported": ({"scheduler": {"metric": "accuracy"}}, "scheduler.metric: not reported at every epoch"),
    "objectives without optuna": ({"search_alg": "random"}, "search_alg: objectives need optuna"),
    "scheduler not on the first objective": (
        {"objectives": [{"metric": "val_ece", "mode": "min"}, {"metric": "val_acc", "mode": "max"}]},
        "scheduler.metric: the scheduler acts on the first objective",
    ),
    "objective on the test set": (
        {"objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "test_ece", "mode": "min"}]},
        "objectives.1.metric: not a validation metric",
    ),
    "objective never measured": (
        {"objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "val_pgd_acc", "mode": "max"}]},
        "objectives.1.metric: not a validation metric",
    ),
    "metric not reported every epoch": (
        {"scheduler": {"metric": "test_acc"}}, "scheduler.metric: not reported at every epoch (got 'test_acc'"
    ),
    "best test metric": ({"scheduler": {"metric": "best_val_test_acc"}}, "scheduler.metric: not reported at every"),
    "selection on test": ({"train": {"val_fraction": 0}}, "train.val_fraction: a sweep selects on a validation"),
    "copies of one grid": (
        {"search": {"alpha": {"grid": [1.0, 2.0]}, "mix_layers": "0,4", "eps": 0.1}, "num_samples": 3,
         "search_alg": "random", "objectives": None},
        "num_samples: with nothing to sample",
    ),
    "repeats 0": ({"repeats": 0}, "repeats: Input should be greater than or equal to 1"),
    "grace above max_t": ({"scheduler": {"grace_period": 9}}, "scheduler.grace_period: must be <= max_t (4)"),
    "fraction of a GPU on CPU": ({"scaling": {"gpus_per_worker": 0.5}}, "scaling.gpus_per_worker: needs use_gpu"),
    "epochs set twice": ({"train": {"epochs": 3}}, "train.epochs: set by the sweep; use scheduler.max_t"),
    "optuna grid": ({"search_alg": "optuna", "search": {"alpha": {"grid": [1.0, 2.0]}}}, "search.alpha: grid needs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_names_the_key(case: str) -> None:
    change, message = BAD[case]
    with pytest.raises(ConfigError) as err:
        config.validate(sweep_with(change))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_bad_configs_exit_2_within_seconds_without_ray(tmp_path: Path) -> None:
    files = {}
    for name, change in {"unknown": {"foo": 1}, "alpha": {"search": {"alpha": 0}},
                         "choice": {"search": {"eps": {"choice": []}}},
                         "layer": {"search": {"mix_layers": "0,5"}},
                         "workers": {"scaling": {"num_workers": 0}}}.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(sweep_with(change)))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = {
        "foo": ["run", str(files["unknown"])],
        "search.alpha": ["run", str(files["alpha"])],
        "search.eps.choice": ["run", str(files["choice"])],
        "search.mix_layers": ["run", str(files["layer"])],
        "scaling.num_workers": ["run", str(files["workers"])],
        "storage: cannot write to": ["run", "quickstart", "--storage", str(blocker / "runs")],
        "config: no file or preset named 'no-such-preset'": ["run", "no-such-preset"],
        "storage: a multi-node trial needs storage every node sees": ["run", "imagenet-resnet50"],
        "num_samples": ["run", "quickstart", "--num-samples", "0"],
    }
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CASES_SCRIPT, json.dumps(list(cases.values()))], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert not report["ray_imported"], "a bad config got as far as importing Ray"
    for key, result in zip(cases, report["results"], strict=True):
        assert result["rc"] == 2, (key, result)
        assert result["stderr"].startswith(f"alignmixup-tune: error: {key}"), (key, result["stderr"])
        assert result["stderr"].count("\n") == 1
        assert result["seconds"] < 5
    assert time.monotonic() - start < 60
    proc = subprocess.run([sys.executable, "-m", "tune_jobs", "run", "no-such-preset"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no-such-preset" in proc.stderr


def test_existing_experiment_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match=r"name: .*taken exists; resume it with `alignmixup-tune resume"):
        cli.prepare_run(cli.parser().parse_args(["run", "quickstart", "--storage", str(tmp_path), "--name", "taken"]))


def test_each_trial_has_its_own_reproducible_seed_and_equal_configurations_share_an_id() -> None:
    sweep = config.validate(SMALL_SWEEP)
    sampled = {"alpha": 0.5, "eps": 0.02, "mix_layers": "0,2"}
    (cfg0, id0), (cfg1, id1) = (config.trial_settings(sweep, sampled, r) for r in (0, 1))
    assert id0["config_id"] == id1["config_id"] and cfg0.seed != cfg1.seed
    assert (id0["seed"], id0["repeat"], id1["repeat"]) == (cfg0.seed, 0, 1)
    assert config.trial_settings(sweep, dict(sampled), 1)[0].seed == cfg1.seed  # reproducible
    other, other_id = config.trial_settings(sweep, {**sampled, "alpha": 0.6}, 0)
    assert other_id["config_id"] != id0["config_id"] and other.seed != cfg0.seed
    reseeded = config.trial_settings(config.validate({**SMALL_SWEEP, "seed": 4}), sampled, 0)[0]
    assert reseeded.seed != cfg0.seed
    # the validation split is the sweep's, whatever the trial's seed: every trial is selected on the same images
    assert cfg0.validation_seed == cfg1.validation_seed == SMALL_SWEEP["seed"] and reseeded.validation_seed == 4
    assert {k: v for k, v in id0.items() if k.startswith("hp_")} == {
        f"hp_{k}": v for k, v in config.hyperparameter_values(cfg0).items()}


@pytest.mark.parametrize("name", presets.preset_names())
def test_presets_validate(name: str) -> None:
    raw, stem = presets.load_raw(name)
    sweep = config.validate(raw)
    assert stem == name and raw["description"]
    cfg = sweep.trial_config({})
    assert cfg.epochs == sweep.scheduler.max_t and cfg.seed == sweep.seed
    if not name.startswith("quickstart"):  # quickstart, quickstart-pbt: CPU
        assert sweep.scaling.use_gpu and cfg.sinkhorn.cost_scaling == "mean"
        assert sweep.search.eps.kind == "loguniform"


def test_quickstart_is_the_issue_s_sweep() -> None:
    sweep = config.validate(presets.load_raw("quickstart")[0])
    cfg = sweep.trial_config({})
    assert (cfg.dataset, cfg.network, cfg.width, cfg.device) == ("digits", "preactresnet18", 0.25, "cpu")
    assert sweep.scaling.num_workers == 2 and not sweep.scaling.use_gpu
    assert sweep.scheduler.kind == "asha" and sweep.trials() >= 6 and sweep.repeats >= 2  # configurations x seeds
    assert sweep.scheduler.grace_period < sweep.scheduler.max_t  # a rung before the end: ASHA has something to cut
    assert {"alpha", "mix_layers", "eps"} <= {n for n, p in sweep.search.params().items() if p.kind != "fixed"}
    cpus = sweep.max_concurrent_trials * (sweep.scaling.trial_cpus + 2 * sweep.scaling.cpus_per_worker)
    assert cpus <= 2  # the trials it runs at once fit this 2-core machine


def test_gpu_presets_share_gpus_and_imagenet_needs_shared_storage(tmp_path: Path) -> None:
    shares = {n: config.validate(presets.load_raw(n)[0]).scaling.gpus_per_worker
              for n in presets.preset_names() if n.startswith("cifar")}
    assert all(1 / g in (2, 4) for g in shares.values())
    imagenet = config.validate({**presets.load_raw("imagenet-resnet50")[0], "storage": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"storage: a multi-node trial .* s3://"):
        preflight.check_storage(imagenet)
    preflight.check_storage(imagenet.model_copy(update={"storage": "s3://bucket/sweeps"}))


def test_trial_config_maps_hyperparameters_onto_train_config() -> None:
    sweep = config.validate(SMALL_SWEEP)
    cfg = sweep.trial_config({"alpha": 0.5, "eps": 0.02, "mix_layers": "0,2"})
    assert (cfg.alpha, cfg.sinkhorn.eps, cfg.mix_layers, cfg.sinkhorn.cost_scaling) == (0.5, 0.02, [0, 2], "mean")
    assert config.hyperparameter_values(cfg) == {
        "alpha": 0.5, "mix_layers": "0,2", "eps": 0.02, "cost_scaling": "mean", "method": "alignmixup",
        "lr": 0.1, "weight_decay": 5e-4,
    }
    assert cfg.threads == 1  # 0.49 CPUs per worker: one thread each, so 2 workers do not oversubscribe 2 cores


def test_search_space_is_data() -> None:
    raw = sweep_with({"search": {"mix_layers": {"grid": [[0, 4], "4"]}, "lr": 0.05}, "search_alg": "random",
                      "objectives": None})
    del raw["train"]["lr"]  # a searched hyperparameter may not also be set in train
    sweep = config.validate(raw)
    params = sweep.search.params()
    assert params["mix_layers"].kind == "grid" and params["mix_layers"].values == ("0,4", "4")
    assert params["lr"].kind == "fixed" and params["alpha"].values == (0.2, 4.0)
    dumped = sweep.model_dump(mode="json")["search"]
    assert dumped["mix_layers"] == {"grid": ["0,4", "4"]} and dumped["lr"] == 0.05
    assert config.validate(sweep.model_dump(mode="json")) == sweep


def test_presets_command_lists_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == presets.preset_names()
    assert cli.main(["presets", "quickstart"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == presets.load_raw("quickstart")[0]


def test_readme_sweep_file_example_validates() -> None:
    """The annotated sweep file in README.md is a valid sweep, with the values it says."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("A sweep file, annotated", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    sweep = config.validate(yaml.safe_load(block))
    cfg = sweep.trial_config({})
    assert (cfg.dataset, cfg.width, cfg.epochs) == ("cifar100", 0.5, 200)
    assert sweep.search.method.kind == "choice" and sweep.search_alg == "optuna"
    assert sweep.scaling.gpus_per_worker == 0.25
