"""README.md's Python API example runs as written, and its PBT scheduler section is a valid sweep section.

The example runs for real in a fresh interpreter against the session's Ray head (RAY_ADDRESS) with its storage under
the test's folder (ALIGNMIXUP_STORAGE): the text is not edited, only its environment is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from helpers.ray_head import Head
from helpers.sweeps import REPO

import analysis
from tune_jobs import config, presets
from tune_jobs.schema import EPOCHS_TABLE, SWEEP_FILE, TRIALS_TABLE

README = REPO / "README.md"
API_MARKER = "<!-- api-example -->"


def fenced_block(text: str, after: str, language: str) -> str:
    """The first ```language block after the first occurrence of `after`."""
    assert after in text, f"README.md has no {after!r}"
    rest = text.split(after, 1)[1]
    return rest.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_readme_api_example_runs_a_sweep_and_reads_it_back(head: Head, tmp_path: Path) -> None:
    example = fenced_block(README.read_text(), API_MARKER, "python")
    storage = tmp_path / "runs"
    env = {**head.env, "RAY_ADDRESS": head.gcs, "ALIGNMIXUP_STORAGE": str(storage),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), head.env.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]

    (trials_file,) = storage.glob(f"*/{TRIALS_TABLE}")  # one experiment, under the storage the example was given
    experiment = trials_file.parent
    trials = pd.read_parquet(trials_file)
    assert len(trials) == 1 and trials["status"].tolist() == ["TERMINATED"]
    row = trials.iloc[0]
    assert (row["epochs"], row["num_workers"], row["width"], row["max_t"]) == (1, 1, 0.125, 1)
    assert 0 <= row["best_val_acc"] <= 100
    assert len(pd.read_parquet(experiment / EPOCHS_TABLE)) == 1
    assert json.loads((experiment / SWEEP_FILE).read_text())["num_samples"] == 1

    loaded = analysis.load(experiment)  # what the example printed from, read back here
    assert loaded.trials["trial_id"].tolist() == trials["trial_id"].tolist()
    assert row["trial_id"] in output  # the example printed the outcome's trials table

    exported = tmp_path / "best-model"
    assert {p.name for p in exported.iterdir()} == {"model.safetensors", "train_config.json", "best.json"}
    assert json.loads((exported / "best.json").read_text())["trial_id"] == row["trial_id"]
    assert "torch.Size([1, 10])" in done.stdout  # load_model's network took a digits input


def test_readme_pbt_scheduler_section_validates() -> None:
    """The PBT scheduler section of README, in place of quickstart-pbt's, is a valid sweep with the values it says."""
    readme = README.read_text()
    block = fenced_block(readme, "<!-- pbt-scheduler -->", "yaml")
    raw = yaml.safe_load(presets.preset_text("quickstart-pbt"))
    raw["scheduler"] = yaml.safe_load(block)["scheduler"]
    sweep = config.validate(raw)
    s = sweep.scheduler
    assert (s.kind, s.max_t, s.perturbation_interval, s.quantile_fraction) == ("pbt", 2000, 100, 0.25)
    assert set(sweep.mutated()) == {"alpha", "eps", "lr", "mix_layers"}
