"""One definition of the trials table: without its tables, the shared sweep's experiment gives the same tables,
rebuilt from Ray's own files by the analysis with tune_jobs.schema."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

import analysis


def test_without_its_tables_a_sweep_gives_the_same_tables(sweep_experiment: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no_tables"
    shutil.copytree(sweep_experiment, copy, ignore=shutil.ignore_patterns("trials.*", "epochs.*", "train_runs"))
    with_tables, rebuilt = analysis.load(sweep_experiment), analysis.load(copy)
    pd.testing.assert_frame_equal(rebuilt.trials, with_tables.trials)  # every column: device-hours, wall time...
    as_lists = lambda frame: frame.map(lambda v: list(v) if isinstance(v, np.ndarray | list) else v)
    pd.testing.assert_frame_equal(as_lists(rebuilt.epochs), as_lists(with_tables.epochs))
