"""The trial-analysis notebook runs top to bottom on synthetic sweeps and shows what each one has."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from helpers.experiments import write_experiment
from nbclient import NotebookClient

import analysis

NOTEBOOK = Path(analysis.__file__).parent / "notebooks" / "trial_analysis.ipynb"


def execute(experiment: Path, monkeypatch) -> tuple[str, int]:
    """Run the notebook on `experiment` (named by ALIGNMIXUP_EXPERIMENT); its text output and image count."""
    monkeypatch.setenv("ALIGNMIXUP_EXPERIMENT", str(experiment))
    monkeypatch.setenv("PYTHONPATH", str(Path(analysis.__file__).parents[1]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "\n".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outputs)
    return text, sum("image/png" in out.get("data", {}) for out in outputs)


def test_notebook_is_stored_without_outputs_and_has_a_parameters_cell() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and re.search(r'^EXPERIMENT = os\.environ\.get\("ALIGNMIXUP_EXPERIMENT", ""\)',
                                          tagged[0].source, re.M)


def test_notebook_on_an_asha_sweep_with_seeds(tmp_path: Path, monkeypatch) -> None:
    written = write_experiment(tmp_path / "asha", configs=4, repeats=3, grace_period=2, sinkhorn=True, tables=True)
    text, images = execute(written.root, monkeypatch)
    experiment = analysis.load(written.root)
    best = analysis.leaderboard(experiment, k=1).iloc[0]
    assert "best_val_acc_mean" in text and f"best: {best['config_id']} ({best['n']} counted trials" in text
    for trial_id in best["trials"].split(","):  # one command per seed of the best configuration
        seed = experiment.trials.set_index("trial_id").loc[trial_id, "seed"]
        assert re.search(rf"^alignmixup-train --dataset digits .*--seed {seed}( |$)", text, re.M)
    assert "single-objective sweep: no Pareto front" in text and "not a population-based sweep" in text
    assert images == 6  # spread, curves, losses, hyperparameters, rungs, Sinkhorn (no Pareto, no schedules)


def test_notebook_on_a_population_based_multi_objective_sweep(tmp_path: Path, monkeypatch) -> None:
    written = write_experiment(tmp_path / "pbt", scheduler="pbt", configs=4, repeats=2, max_t=10, seed=2,
                               objectives=[("val_acc", "max"), ("val_ece", "min")], eval_every=2)
    text, images = execute(written.root, monkeypatch)
    experiment = analysis.load(written.root)
    lineage = analysis.lineage(experiment)
    assert len(lineage) >= 3 and all(t in text for t in lineage["trial_id"])
    assert "no ASHA rungs: the pbt scheduler stops no trial at rungs" in text
    assert "no command (" in text and "change during training" in text
    assert images == 6  # spread, curves, losses, hyperparameters, Pareto, schedules
