"""The cluster definitions in cluster/: every YAML parses and the fields that matter hold (no cloud)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray._private.thirdparty.pathspec import PathSpec

from cluster import submit
from tune_jobs.config import Scaling, SweepConfig, validate
from tune_jobs.preflight import check_storage
from tune_jobs.presets import load_raw, preset_names

CLUSTER = Path(submit.__file__).parent
REPO = CLUSTER.parent
PYTHON = f"py{sys.version_info.major}{sys.version_info.minor}"
BASE_IMAGE = f"rayproject/ray:{ray.__version__}-{PYTHON}-gpu"
IMAGE_TAG = f"/alignmixup-ray:{ray.__version__}-{PYTHON}-gpu"  # our image, in whatever registry
LAUNCHERS = {"aws.yaml": "s3://", "gcp.yaml": "gs://"}


def load(path: Path) -> Any:
    """The single YAML document in `path`."""
    return yaml.safe_load(path.read_text())


def kuberay_docs() -> list[dict[str, Any]]:
    """Every manifest under cluster/kuberay."""
    files = sorted((CLUSTER / "kuberay").glob("*.yaml"))
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text())]


def kuberay(kind: str) -> dict[str, Any]:
    """The one manifest of this kind under cluster/kuberay."""
    (doc,) = [d for d in kuberay_docs() if d["kind"] == kind]
    return doc


def storage_env(options: list[str]) -> str:
    """ALIGNMIXUP_STORAGE from docker run options."""
    (value,) = [o.split("=", 2)[2] for o in options if o.startswith("--env=ALIGNMIXUP_STORAGE=")]
    return value


def sweep_entrypoint(entrypoint: str) -> tuple[str, str | None, bool]:
    """(preset, storage or None, dry run) of a `python -m tune_jobs run PRESET [--storage URI] [--dry-run]`."""
    args = shlex.split(entrypoint)
    assert args[:4] == list(submit.SWEEP_COMMAND), entrypoint
    storage = args[args.index("--storage") + 1] if "--storage" in args else None
    return args[4], storage, args[-1] == "--dry-run"


def gpu_presets() -> dict[str, SweepConfig]:
    """The validated presets that train on GPUs (the cluster ones)."""
    sweeps = {name: validate(load_raw(name)[0]) for name in preset_names()}
    return {name: sweep for name, sweep in sweeps.items() if sweep.scaling.use_gpu}


def check_presets_fit(pools: dict[int, tuple[float, int]]) -> None:
    """Each GPU preset packs its GPU pool: {GPUs per node: (CPUs per node, max nodes)}."""
    for name, sweep in gpu_presets().items():
        s: Scaling = sweep.scaling
        assert s.gpus_per_worker is not None
        if s.multi_node:  # whole 8-GPU nodes per trial, one worker per GPU, max_concurrent_trials at once
            cpus, nodes = pools[8]
            assert s.num_workers % 8 == 0 and s.gpus_per_worker == 1, name
            assert 8 * s.cpus_per_worker + s.trial_cpus <= cpus, name
            assert s.num_workers // 8 * (sweep.max_concurrent_trials or 1) <= nodes, name
        else:  # trials share a 1-GPU node: the GPU fraction, not the CPUs, must bound how many fit
            cpus, _ = pools[1]
            per_node = round(1 / (s.num_workers * s.gpus_per_worker))
            assert per_node * (s.num_workers * s.cpus_per_worker + s.trial_cpus) <= cpus, name


def test_every_yaml_in_cluster_parses() -> None:
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {p.relative_to(CLUSTER).as_posix() for p in files} >= {
        "aws.yaml", "gcp.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"
    }
    for path in files:
        assert all(doc for doc in yaml.safe_load_all(path.read_text())), path


def test_dockerfile_builds_on_the_matching_ray_image_and_installs_the_project() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(BASE_IMAGE)}$", text, re.M), BASE_IMAGE
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M)
    assert "RAY_AUTH_MODE=token" in text


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config(name: str) -> None:
    config = load(CLUSTER / name)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # what `ray up` checks first

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "trials stay off the head"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert sorted(t["resources"]["GPU"] for t in workers.values()) == [1, 8]
    for node_type in workers.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"]
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]

    docker = config["docker"]
    assert docker["image"].endswith(IMAGE_TAG)
    storage = storage_env(docker["run_options"])
    assert storage.startswith(LAUNCHERS[name]) and len(storage) > len(LAUNCHERS[name])
    assert "--env=RAY_AUTH_MODE=token" in docker["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["file_mounts"]["~/alignmixup"] == "."
    assert any(c.startswith("pip install") and "~/alignmixup" in c for c in config["setup_commands"])

    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in (CLUSTER / name).read_text()

    pools = {w["resources"]["GPU"]: (w["resources"]["CPU"], w["max_workers"]) for w in workers.values()}
    check_presets_fit(pools)

    (big,) = [t for t in workers.values() if t["resources"]["GPU"] == 8]
    stage = big["worker_setup_commands"][-1].split()
    assert stage[:3] == ["python", "-m", "cluster.stage_data"] and stage[3].startswith(LAUNCHERS[name])
    imagenet = validate(load_raw("imagenet-resnet50")[0])
    assert stage[4] == str(imagenet.trial_config({}).data_dir)


def test_gcp_specifics() -> None:
    config = load(CLUSTER / "gcp.yaml")
    project, zone = config["provider"]["project_id"], config["provider"]["availability_zone"]
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        if node_type["resources"].get("GPU"):
            assert node["scheduling"]["onHostMaintenance"] == "TERMINATE", name  # GCE requires it with GPUs
            assert node["serviceAccounts"][0]["email"].endswith(f"@{project}.iam.gserviceaccount.com")
        for disk in node["disks"]:
            assert disk["initializeParams"].get("diskType", f"zones/{zone}/").startswith(f"zones/{zone}/")


def test_kuberay_raycluster() -> None:
    cluster = kuberay("RayCluster")
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "ray.io/v1" and spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True

    pools = {}
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["image"].endswith(IMAGE_TAG)
        (ray_container,) = pod["containers"]
        (storage,) = [e["value"] for e in ray_container["env"] if e["name"] == "ALIGNMIXUP_STORAGE"]
        assert re.match(r"^(s3|gs)://.+", storage)
        if group is not spec["headGroupSpec"]:
            limits = ray_container["resources"]["limits"]
            assert ray_container["resources"]["requests"] == limits
            pools[limits["nvidia.com/gpu"]] = (float(limits["cpu"]), group["maxReplicas"])
            assert group["minReplicas"] == 0 < group["maxReplicas"]
    assert sorted(pools) == [1, 8]
    check_presets_fit(pools)
    # no Service or Ingress of our own: the head's ClusterIP service is the only way in (port-forward)
    assert sorted(d["kind"] for d in kuberay_docs()) == ["RayCluster", "RayJob"]


def test_kuberay_rayjob_runs_a_preset_on_the_raycluster() -> None:
    job, cluster = kuberay("RayJob"), kuberay("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    preset, storage, dry_run = sweep_entrypoint(job["spec"]["entrypoint"])
    assert preset in preset_names() and storage is not None and not dry_run
    assert re.match(r"^(s3|gs)://.+", storage)
    sweep = validate({**load_raw(preset)[0], "storage": storage})
    check_storage(sweep)  # a URI: accepted without touching it


def test_runtime_env_uploads_code_and_leaves_data_results_git_caches() -> None:
    env = load(CLUSTER / "runtime_env.yaml")
    assert "working_dir" not in env  # given on the command line: --working-dir .
    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])  # what Ray applies to the upload
    for path in ["data", ".git", "results", "runs", ".venv", "tune_jobs/__pycache__", ".pytest_cache",
                 ".ruff_cache", "alignmixup.egg-info", "checkpoint.pt"]:
        assert spec.match_file(path), path
    for path in ["alignmixup/data.py", "tune_jobs/presets/quickstart.yaml", "cluster/runtime_env.yaml",
                 "pyproject.toml"]:
        assert not spec.match_file(path), path
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def test_readme_has_the_ray_job_submit_line_of_every_preset() -> None:
    text = (CLUSTER / "README.md").read_text()
    lines = [line.strip().removeprefix("$ ") for line in text.splitlines() if "ray job submit" in line]
    documented = {}
    for line in lines:
        if " -- " in line:
            preset, storage, dry_run = sweep_entrypoint(line.split(" -- ", 1)[1])
            assert line == submit.ray_job_submit_line(submit.sweep_args(preset, storage, dry_run=dry_run))
            if not dry_run:
                documented[preset] = line
    assert set(documented) == set(preset_names())
    assert all(re.search(r"--storage (s3|gs)://", line) for line in documented.values())
