"""Reading back what the trackers wrote, each with its own reader: TensorBoard's EventAccumulator, MLflow's
client, W&B's `wandb leet inspect` of an offline run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def scalars(folder: Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar, over every event file in the folder."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {s.step: s.value for s in events.Scalars(tag)}


def tensorboard_hparams(folder: Path) -> dict[str, Any]:
    """The parameters TensorBoard's HParams plugin shows for the run in `folder`."""
    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in values.items()}


def tensorboard_text(folder: Path, tag: str) -> str:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def mlflow_runs(uri: str, experiment: str) -> tuple[MlflowClient, dict[str, Any]]:
    """run name -> run, in an MLflow experiment."""
    if uri.startswith("file:"):  # MLflow 3 reads its file store only with this set (as alignmixup.tracking does)
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {uri}"
    return client, {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def history(client: MlflowClient, run: Any, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def _inspect(*args: str | Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wandb_runs(folder: Path) -> list[dict[str, Any]]:
    """Each offline W&B run under <folder>/wandb, oldest first: W&B's summary of it plus its history rows."""
    runs = []
    for run_dir in sorted((folder / "wandb").glob("offline-run-*")):
        run = json.loads(_inspect("--summary", "--json", run_dir))
        records = [json.loads(line) for line in _inspect("--json", run_dir).splitlines() if line.strip()]
        run["history"] = [r["history"]["item"] for r in records if r["type"] == "history"]
        runs.append(run)
    return runs


def wandb_history(runs: list[dict[str, Any]], key: str) -> dict[int, float]:
    """epoch -> value of a W&B metric, over the runs (a resumed run continues in a new offline folder)."""
    return {int(item["epoch"]): item[key] for run in runs for item in run["history"] if key in item}


def numbers(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    """epoch -> value of `key` in the rows that hold a number for it."""
    return {row["epoch"]: row[key] for row in rows
            if isinstance(row.get(key), int | float) and not isinstance(row[key], bool) and math.isfinite(row[key])}


