"""tune_jobs.preflight: the checks of a sweep before any trial starts, as pure functions of the sweep and a cluster
described as plain data (what ray.nodes() returns), the data layout check, GPU memory packing, the modules the
presets need against the package's runtime dependencies, and the dry runs that need no Ray."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from helpers.data_writers import write_cifar, write_imagefolder, write_tinyimagenet
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from alignmixup.config import TrainConfig
from alignmixup.console import ConfigError
from alignmixup.data import DataError, check_layout
from tune_jobs import cli, preflight
from tune_jobs.config import SweepConfig, validate
from tune_jobs.preflight import ClusterView
from tune_jobs.presets import load_raw, preset_names

REPO = Path(__file__).resolve().parents[1]
GPU_PRESET = "cifar10-preactresnet18"
HEAD_ONLY = [{"NodeID": "head", "Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"memory": 1e10}}]


def preset(name: str, **changes: Any) -> SweepConfig:
    """A shipped preset with top-level keys changed and `scaling` keys merged."""
    raw = load_raw(name)[0]
    scaling = {**raw.get("scaling", {}), **changes.pop("scaling", {})}
    return validate({**raw, **changes, "scaling": scaling})


def nodes(*resources: dict[str, float], dead: int = 0) -> list[dict[str, Any]]:
    """ray.nodes()-shaped records: alive nodes with these resources, and `dead` dead ones with 8 GPUs."""
    alive = [{"NodeID": f"n{i}", "Alive": True, "NodeManagerAddress": f"10.0.0.{i}", "Resources": r}
             for i, r in enumerate(resources)]
    return alive + [{"NodeID": f"d{i}", "Alive": False, "Resources": {"CPU": 96, "GPU": 8}} for i in range(dead)]


def view(*resources: dict[str, float], driver: str | None = "n0", autoscaling: bool = False, dead: int = 0
         ) -> ClusterView:
    return ClusterView.from_ray_nodes("the cluster at 10.0.0.0:6379", nodes(*resources, dead=dead), driver,
                                      autoscaling)


def refused(field: str, check: Any, *args: Any, **kwargs: Any) -> str:
    """Run a check that must fail; return its one-line message, which names `field` first."""
    with pytest.raises(ConfigError) as error:
        check(*args, **kwargs)
    message = str(error.value)
    assert message.startswith(f"{field}: ") and "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------- cluster resources


def test_gpu_sweep_on_a_cluster_without_gpus() -> None:
    message = refused("scaling.use_gpu", preflight.check_resources, preset(GPU_PRESET),
                      view({"CPU": 2}, {"CPU": 16}, dead=1))  # a dead GPU node does not count
    assert "2 nodes: CPU 2; CPU 16" in message and "ALIGNMIXUP_AUTOSCALING=1" in message


def test_a_worker_larger_than_any_node() -> None:
    cpu = preset("quickstart", scaling={"cpus_per_worker": 4})
    assert "asks 4 CPUs" in refused("scaling.cpus_per_worker", preflight.check_resources, cpu, view({"CPU": 2}))
    gpu = preset(GPU_PRESET, scaling={"gpus_per_worker": 2, "gpu_memory_gb": None})
    refused("scaling.gpus_per_worker", preflight.check_resources, gpu, view({"CPU": 16, "GPU": 1}))
    # each part exists, but on different nodes
    both = preset(GPU_PRESET, scaling={"cpus_per_worker": 4})
    message = refused("scaling.cpus_per_worker", preflight.check_resources, both,
                      view({"CPU": 16}, {"CPU": 2, "GPU": 1}))
    assert "4 CPUs and 0.25 GPUs together" in message


def test_a_trial_that_never_fits_at_once() -> None:
    spread = preset("quickstart", scaling={"num_workers": 4, "placement_strategy": "STRICT_SPREAD",
                                           "cpus_per_worker": 1})
    message = refused("scaling.num_workers", preflight.check_resources, spread,
                      view({"CPU": 8}, {"CPU": 8}, {"CPU": 0.5}))
    assert "at most 2 at once" in message
    preflight.check_resources(spread, view(*[{"CPU": 1}] * 4))
    pack = preset("quickstart", scaling={"num_workers": 4, "cpus_per_worker": 1})
    refused("scaling.num_workers", preflight.check_resources, pack, view({"CPU": 2}, {"CPU": 1.5}))
    preflight.check_resources(pack, view({"CPU": 2}, {"CPU": 2}))
    strict = preset("quickstart", scaling={"num_workers": 4, "cpus_per_worker": 1, "placement_strategy": "STRICT_PACK"})
    refused("scaling.num_workers", preflight.check_resources, strict, view({"CPU": 2}, {"CPU": 2}))
    # four quarter-GPU workers share one GPU
    shared = preset(GPU_PRESET, scaling={"num_workers": 4, "gpu_memory_gb": None})
    preflight.check_resources(shared, view({"CPU": 8, "GPU": 1}))
    refused("scaling.num_workers", preflight.check_resources, shared, view({"CPU": 6, "GPU": 1}))


def test_an_autoscaling_cluster_is_not_judged_by_the_nodes_up_now() -> None:
    head_only = ClusterView.from_ray_nodes("the cluster at 10.0.0.1:6379", HEAD_ONLY, "head", autoscaling=True)
    sweep = preset(GPU_PRESET, storage="s3://bucket/sweeps")
    preflight.check_cluster(sweep, head_only)  # GPU nodes come when trials ask for them
    static = ClusterView.from_ray_nodes("the cluster at 10.0.0.1:6379", HEAD_ONLY, "head", autoscaling=False)
    refused("scaling.use_gpu", preflight.check_cluster, sweep, static)


# ----------------------------------------------------------------------------------- storage


def test_local_storage_is_refused_where_trials_leave_the_drivers_node(tmp_path: Path) -> None:
    local = preset("quickstart", storage=str(tmp_path / "runs"))
    message = refused("storage", preflight.check_storage, local, view({"CPU": 2}, {"CPU": 2}))
    assert "2 nodes" in message and "shared_storage: true" in message and "restarts from epoch 0" in message
    # the shipped clusters: a head without CPUs, trials on the nodes the autoscaler adds
    head = ClusterView.from_ray_nodes("the cluster at 10.0.0.1:6379", HEAD_ONLY, "head", autoscaling=True)
    assert "autoscales" in refused("storage", preflight.check_storage, local, head)
    static_head = ClusterView.from_ray_nodes("the cluster at 10.0.0.1:6379", HEAD_ONLY, "head")
    assert "cannot run a worker" in refused("storage", preflight.check_storage, local, static_head)
    for multi in (view({"CPU": 2}, {"CPU": 2}), head):  # a mount every node sees, or a bucket
        preflight.check_storage(local.model_copy(update={"shared_storage": True}), multi)
        preflight.check_storage(local.model_copy(update={"storage": "gs://bucket/sweeps"}), multi)
    preflight.check_storage(local, view({"CPU": 2}))  # one node: the driver's
    assert (tmp_path / "runs").is_dir()
    multi_node = preset("imagenet-resnet50", storage=str(tmp_path / "runs"))
    assert "multi-node trial" in refused("storage", preflight.check_storage, multi_node)
    preflight.check_storage(multi_node.model_copy(update={"shared_storage": True}))


def test_storage_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = refused("storage", preflight.check_storage, preset("quickstart", storage=str(blocker / "runs")))
    assert str(blocker) in message
    refused("storage", preflight.check_storage, preset("quickstart", storage="file:///tmp/runs"))


# ----------------------------------------------------------------------------------- data layout


def test_check_layout_reads_nothing_and_names_what_is_missing(tmp_path: Path) -> None:
    check_layout(TrainConfig(dataset="digits"))
    write_cifar(tmp_path / "c10", classes=10, per_batch=2, test=2)
    write_cifar(tmp_path / "c100", classes=100, per_batch=2, test=2)
    write_tinyimagenet(tmp_path / "tiny" / "tiny-imagenet-200", per_class=1, val=3)  # its parent is accepted
    write_imagefolder(tmp_path / "imagenet", classes=2, per_class=1, val=1)
    for dataset, folder in (("cifar10", "c10"), ("cifar100", "c100"), ("tinyimagenet", "tiny"),
                            ("imagenet", "imagenet")):
        check_layout(TrainConfig(dataset=dataset, data_dir=tmp_path / folder))
    (tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "tiny" / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    for dataset, folder, missing in (("cifar10", "c10", "cifar-10-batches-py/data_batch_3"),
                                     ("cifar100", "absent", "no such directory"),
                                     ("tinyimagenet", "tiny", "val/val_annotations.txt"),
                                     ("imagenet", "c100", "missing class folders in train/")):
        with pytest.raises(DataError, match=f"^data_dir {tmp_path / folder}: .*{missing}"):
            check_layout(TrainConfig(dataset=dataset, data_dir=tmp_path / folder))
    assert not any(tmp_path.rglob("*.npz")) and not any(tmp_path.rglob("*.tar.gz"))  # nothing read or fetched


# ----------------------------------------------------------------------------------- GPU memory


def test_shipped_gpu_presets_fit_the_24_gb_card_they_name() -> None:
    margins = {}
    for name in preset_names():
        sweep = preset(name)
        if not sweep.scaling.use_gpu:
            continue
        assert sweep.scaling.gpu_memory_gb == 24, name
        estimate = preflight.check_memory(sweep)
        assert estimate is not None
        margins[name] = sweep.scaling.gpus_per_worker * 24 - estimate.peak_gb
    assert len(margins) >= 6 and min(margins.values()) > 0, margins


def test_a_packing_that_does_not_fit_is_refused_naming_gpus_per_worker() -> None:
    sweep = preset("tinyimagenet-preactresnet18", scaling={"gpus_per_worker": 0.25})
    message = refused("scaling.gpus_per_worker", preflight.check_memory, sweep)
    assert "0.25 of a 24 GB GPU is 6.0 GB" in message and "layer 2 of mix_layers [0, 2, 3, 4]" in message
    # without stage 2 in the search space, the same packing is judged on stage 3
    deep = preset("tinyimagenet-preactresnet18", scaling={"gpus_per_worker": 0.25},
                  search={**load_raw("tinyimagenet-preactresnet18")[0]["search"], "mix_layers": {"choice": ["0,3,4"]}})
    estimate, cfg = preflight.estimate_memory(deep)
    assert estimate.mix_layer == 3 and cfg.mix_layers == [0, 3, 4]
    unnamed = preset("tinyimagenet-preactresnet18", scaling={"gpus_per_worker": 0.25, "gpu_memory_gb": None})
    assert preflight.check_memory(unnamed) is not None  # estimated, not judged: no card named
    assert preflight.check_memory(preset("quickstart")) is None


def test_two_ranks_of_a_trial_never_share_a_gpu() -> None:
    """NCCL refuses two ranks of one communicator on one device ("Duplicate GPU detected")."""
    halves = preset(GPU_PRESET, scaling={"num_workers": 2, "gpus_per_worker": 0.5})
    message = refused("scaling.gpus_per_worker", preflight.check_packing, halves)
    assert "Duplicate GPU detected" in message
    preflight.check_packing(halves.model_copy(update={"scaling": halves.scaling.model_copy(
        update={"placement_strategy": "STRICT_SPREAD"})}))  # one worker per node
    preflight.check_packing(preset(GPU_PRESET, scaling={"num_workers": 2, "gpus_per_worker": 1}))
    preflight.check_packing(preset(GPU_PRESET))  # one worker per trial, trials share the GPU


def test_memory_candidates_cover_the_searched_layers_and_methods() -> None:
    sweep = preset("quickstart", search={"mix_layers": {"choice": ["0,4", "2"]}, "method": {"choice": ["mixup",
                                                                                                     "alignmixup"]}})
    got = {(tuple(c.mix_layers or ()), c.method) for c in preflight.memory_candidates(sweep)}
    assert got == {((0, 4), "mixup"), ((0, 4), "alignmixup"), ((2,), "mixup"), ((2,), "alignmixup")}


# ----------------------------------------------------------------------------------- modules and dependencies


def runtime_requirements(requires: list[str]) -> dict[str, Requirement]:
    """Requirements without an extra marker (what `pip install .` installs), by canonical name."""
    reqs = [Requirement(r) for r in requires]
    return {canonicalize_name(r.name): r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})}


@functools.cache
def module_distributions() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions that provide it (one scan of every installed RECORD)."""
    return metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in module_distributions().get(module, [])}


def preset_distributions() -> set[str]:
    """The distributions behind every module SETTING_MODULES says a shipped preset needs."""
    return {d for name in preset_names() for modules in preflight.needed_modules(preset(name)).values()
            for m in modules for d in distributions_of(m)}


def pyproject_requires() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_what_the_presets_need_is_a_runtime_dependency_in_pyproject() -> None:
    needed = preset_distributions()
    assert "optuna" in needed  # the GPU presets search with Optuna
    assert needed <= set(runtime_requirements(pyproject_requires())), needed


def test_the_installed_metadata_has_them_too() -> None:
    dist = metadata.distribution("alignmixup")
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if url.removeprefix("file://") != str(REPO):
        pytest.skip(f"alignmixup is installed from {url or 'an index'}, not this checkout")
    assert preset_distributions() <= set(runtime_requirements(metadata.requires("alignmixup") or []))


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements install, through the installed metadata (extras followed)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(sub)
    return names


BUILD_SEARCHERS = """
import json, sys, tempfile
from tune_jobs import driver
from tune_jobs.config import validate
from tune_jobs.presets import load_raw, preset_names
before = {m.partition(".")[0] for m in sys.modules}
for name in preset_names():
    sweep = validate(load_raw(name)[0])
    driver.search_alg(sweep, 1)
    driver.scheduler(sweep, tempfile.mkdtemp())
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules} - before)))
"""


def test_what_building_the_presets_searchers_imports_is_installed_by_the_runtime_dependencies() -> None:
    """Derived, not declared: the modules Tune imports for every shipped preset's search algorithm and scheduler."""
    done = subprocess.run([sys.executable, "-c", BUILD_SEARCHERS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    third_party = {d for m in imported if m not in sys.stdlib_module_names for d in distributions_of(m)}
    assert "optuna" in third_party
    installed = closure(list(runtime_requirements(pyproject_requires()).values()))
    assert third_party <= installed, third_party - installed


def test_a_missing_module_is_named_by_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    message = refused("search_alg", preflight.check_modules, preset(GPU_PRESET))
    assert "optuna needs the Python module optuna" in message
    preflight.check_modules(preset("quickstart"))  # random search: nothing to import


# ----------------------------------------------------------------------------------- dry runs without Ray


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, float]:
    start = time.monotonic()
    code = cli.main(["run", *args, "--dry-run"])
    out = capsys.readouterr()
    return code, out.err or out.out, time.monotonic() - start


def test_dry_run_of_a_sweep_whose_data_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {**load_raw("quickstart")[0], "train": {**load_raw("quickstart")[0]["train"], "dataset": "cifar10",
                                                 "data_dir": str(tmp_path / "cifar10")}}
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(raw))
    code, err, seconds = dry_run(capsys, str(path), "--storage", str(tmp_path / "runs"))
    assert code == 2 and err.startswith(f"alignmixup-tune: error: train.data_dir {tmp_path / 'cifar10'}: ")
    assert seconds < 60 and not (tmp_path / "cifar10").exists()  # nothing downloaded
    write_cifar(tmp_path / "cifar10", classes=10, per_batch=2, test=2)
    code, out, _ = dry_run(capsys, str(path), "--storage", str(tmp_path / "runs"), "--name", "x")
    assert code == 0 and "nothing started" in out and "on this machine" in out
    assert not (tmp_path / "runs" / "x").exists()


def test_dry_run_of_a_sweep_whose_storage_uri_cannot_be_written(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 endpoint on a closed local port: refused offline, in seconds (about 12: the AWS SDK retries)."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credential lookup on a metadata server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")  # pyarrow's S3 client reads it
    uri = "s3://bucket/sweeps"
    code, err, seconds = dry_run(capsys, "quickstart", "--storage", uri)
    assert code == 2 and err.startswith(f"alignmixup-tune: error: storage: cannot write to {uri} (")
    assert err.count("\n") == 1 and seconds < 60
