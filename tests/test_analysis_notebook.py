"""The trial-analysis notebook runs top to bottom against a real sweep and shows its leaderboard."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

import analysis

NOTEBOOK = Path(analysis.__file__).parent / "notebooks" / "trial_analysis.ipynb"


def test_notebook_executes_and_shows_leaderboard(sweep_experiment: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALIGNMIXUP_EXPERIMENT", str(sweep_experiment))
    monkeypatch.setenv("PYTHONPATH", str(Path(analysis.__file__).parents[1]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "\n".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outputs)
    best = analysis.leaderboard(analysis.load(sweep_experiment), k=1)["trial_id"].iloc[0]
    assert "best_val_acc" in text and best in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 3
    assert not [out for out in outputs if out.output_type == "error"]
