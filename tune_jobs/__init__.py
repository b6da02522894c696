"""Hyperparameter sweeps of the alignmixup trainer: Ray Tune ASHA over Ray Train DDP trials.

`tune_jobs.config` validates a sweep (no Ray), `tune_jobs.driver` runs it, `tune_jobs.tables` writes and
reads the tables it leaves, `tune_jobs.cli` is `alignmixup-tune`.
"""

import os

# Ray 2.60 defaults to Train V2, but a set-and-empty RAY_TRAIN_V2_ENABLED silently selects the old API
# (platform notes); it must hold before ray.train is first imported.
if not os.environ.get("RAY_TRAIN_V2_ENABLED"):
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"


def pin_ray_address() -> None:
    """Worker setup hook: make address-less Ray state API calls in this worker find its own cluster.

    Ray Train's PlacementGroupCleaner asks the state API about its controller with no address; with
    more than one Ray instance on the machine and no RAY_ADDRESS that raises "Found multiple active
    Ray instances", the cleaner's monitor thread dies, and the placement group of every trial ASHA
    stops leaks until later trials time out starting their workers (ray-project/ray#65447 makes the
    monitor survive such errors). Kept here, not in tune_jobs.driver, so workers import nothing heavy.
    """
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
