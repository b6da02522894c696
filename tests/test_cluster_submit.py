"""The submission helper's address and token lookup, its command lines, and data staging (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import stage_data, submit

TOKEN_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory and no token or address variables."""
    for var in (*TOKEN_VARS, "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_token_is_found_where_ray_looks_in_ray_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert submit.find_token() is None
    write(home / ".ray" / "auth_token", "from-home\n")
    assert submit.find_token() == "from-home"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(write(home / "tok", " from-path ")))
    assert submit.find_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.find_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert submit.find_token() is None


def test_missing_token_is_an_error_where_ray_says_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(submit.ClusterError, match="RAY_AUTH_MODE=token but no token"):
        submit.find_token()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "absent"))
    with pytest.raises(submit.ClusterError, match="RAY_AUTH_TOKEN_PATH="):
        submit.find_token()


def test_address_flag_then_ray_variables_then_local(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert submit.resolve_address(None) == submit.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://from-ray-address:8265")
    assert submit.resolve_address(None) == "http://from-ray-address:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://from-api:8265")
    assert submit.resolve_address(None) == "http://from-api:8265"
    assert submit.resolve_address("http://flag:1") == "http://flag:1"


def test_sweep_args_for_presets_and_config_files(tmp_path: Path) -> None:
    assert submit.sweep_args("quickstart", "s3://b/x", "n", 2) == [
        *submit.SWEEP_COMMAND, "quickstart", "--storage", "s3://b/x", "--name", "n", "--num-samples", "2"
    ]
    config = write(tmp_path / "sweeps" / "mine.yaml", "{}")
    assert submit.sweep_args(str(config), working_dir=tmp_path)[-1] == "sweeps/mine.yaml"
    with pytest.raises(submit.ClusterError, match="outside the working dir"):
        submit.sweep_args(str(config), working_dir=tmp_path / "sweeps" / "elsewhere")
    with pytest.raises(submit.ClusterError, match="neither a config file nor a preset"):
        submit.sweep_args("no-such-preset")


def test_dry_run_prints_the_ray_job_submit_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = ["--address", "http://127.0.0.1:9999"]
    assert submit.main([*address, "submit", "quickstart", "--storage", "gs://b/s", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == (
        "RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:9999 --working-dir . "
        "--runtime-env cluster/runtime_env.yaml -- python -m tune_jobs run quickstart --storage gs://b/s"
    )


def test_unreachable_cluster_is_one_line_and_exit_1(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.main(["--address", "http://127.0.0.1:9", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("alignmixup-cluster: error: ") and err.count("\n") == 1


def test_command_line_conventions(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--version, one line and exit 2 on bad input, no prefix matching, defaults in --help (alignmixup.console)."""
    from alignmixup import __version__

    with pytest.raises(SystemExit) as exit_:
        submit.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"alignmixup-cluster {__version__}"
    for argv in (["launch"], ["submit", "quickstart", "--dry"], ["submit", "quickstart", "--num-samples", "x"],
                 ["--addr", "http://x", "list"], ["submit", "no-such-preset", "--dry-run"]):
        assert submit.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("alignmixup-cluster: error: ") and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit):
        submit.main(["submit", "--help"])
    assert "(default: .)" in capsys.readouterr().out  # --working-dir


def test_a_bad_sweep_is_refused_here_and_nothing_is_uploaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_cluster(*_: object) -> None:
        raise AssertionError("the cluster was contacted")

    monkeypatch.setattr(submit, "connect", no_cluster)
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path / "bad.yaml", "recipe: cifar10-preactresnet18\nscheduler: {kind: asha, max_t: 10}\n"
                                       "train: {data_dir: /data/cifar10, val_fraction: 0.1}\n"
                                       "search: {mix_layers: {choice: ['0,7']}}\n")
    for extra in ([], ["--dry-run"]):
        assert submit.main(["submit", str(bad), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("alignmixup-cluster: error: search.mix_layers: ") and err.count("\n") == 1, err
    # packed too tightly for the GPU it names: refused here too, naming the field
    tight = write(tmp_path / "tight.yaml", (Path(__file__).parents[1] / "tune_jobs" / "presets" /
                                           "tinyimagenet-preactresnet18.yaml").read_text()
                  .replace("gpus_per_worker: 0.5", "gpus_per_worker: 0.25"))
    assert submit.main(["submit", str(tight), "--dry-run"]) == 2
    assert "scaling.gpus_per_worker: 0.25 of a 24 GB GPU is 6.0 GB" in capsys.readouterr().err


def test_stage_data_copies_once(tmp_path: Path) -> None:
    write(tmp_path / "bucket" / "train" / "n01" / "a.jpg", "x")
    dest = tmp_path / "data" / "imagenet"
    assert stage_data.stage(str(tmp_path / "bucket"), dest)
    assert (dest / "train" / "n01" / "a.jpg").read_text() == "x"
    assert not stage_data.stage(str(tmp_path / "bucket"), dest)
    assert stage_data.main([str(tmp_path / "bucket"), str(dest)]) == 0
