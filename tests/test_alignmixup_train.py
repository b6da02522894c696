"""The trainer: every method trains, resume is bit-for-bit, and gloo DDP shards and synchronises."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import alignmixup.mixing as mixing
from alignmixup.config import TrainConfig
from alignmixup.trainer import Trainer, lr_at

TIMING = {"epoch_time_s", "images_per_s"}


def small(**kw) -> TrainConfig:
    base = dict(dataset="digits", width=0.125, epochs=3, batch_size=64, lr=0.05, lr_schedule="cosine",
                eval_test="end", threads=2, seed=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["alignmixup", "mixup", "manifold", "erm"])
def test_every_method_trains(method, monkeypatch):
    calls = []
    real = mixing.sinkhorn_plan
    monkeypatch.setattr(mixing, "sinkhorn_plan", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    tr = Trainer(small(method=method, mix_layers=[0, 3, 4]))
    before = [p.detach().clone() for p in tr.model.parameters()]
    history = tr.fit()
    assert [m.epoch for m in history] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(m.train_loss)) for m in history)
    assert history[-1].val_acc > 50.0  # chance is 10%
    assert history[-1].test_acc is not None and history[-1].best_val_test_acc is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))
    if method == "alignmixup":  # aligned at stages 3 (N = 8x8 = 64) and 4 (N = 16), never at the input
        assert {s[1] for s in calls} == {64, 16}
    else:
        assert not calls


def comparable(trainer: Trainer) -> list[dict]:
    return [{k: v for k, v in m.as_dict().items() if k not in TIMING} for m in trainer.history]


def test_two_epochs_equal_one_then_resume_one(tmp_path):
    straight = Trainer(small(epochs=2))
    straight.fit()
    first = Trainer(small(epochs=2))
    first.train_epoch()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = Trainer(small(epochs=2))
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.epoch == 1
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert comparable(straight) == comparable(resumed)
    assert straight.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        resumed.optimizer.state_dict()["state"][0]["momentum_buffer"])


def test_release_step_schedule_and_cosine():
    cfg = TrainConfig(milestones=[500, 1000, 1500], gammas=[0.1, 0.1, 0.1])
    assert [round(lr_at(cfg, e), 8) for e in (0, 499, 500, 1000, 1999)] == [0.1, 0.1, 0.01, 0.001, 0.0001]
    cos = TrainConfig(lr_schedule="cosine", epochs=10)
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 5) == pytest.approx(0.05)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    tr = Trainer(small(epochs=1, threads=1))
    losses: list[float] = []
    step = tr.step
    tr.step = lambda x, y: (out := step(x, y), losses.append(out[0].item()))[0]  # every batch's loss on this rank
    buffers: list[list[torch.Tensor]] = []
    evaluate = tr.evaluate
    tr.evaluate = lambda split: (buffers.append([b.clone() for b in tr.model_without_ddp.buffers()]),
                                 evaluate(split))[1]  # the buffers each evaluation sees
    tr.fit()
    torch.save({"indices": tr.train_indices(0), "params": [p.detach() for p in tr.model_without_ddp.parameters()],
                "metrics": tr.history[-1].as_dict(), "losses": losses, "eval_buffers": buffers},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gloo_ddp_two_ranks_disjoint_shards_same_weights_same_evaluated_model(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not set(r0["indices"].tolist()) & set(r1["indices"].tolist())
    assert len(r0["indices"]) == len(r1["indices"])
    for a, b in zip(r0["params"], r1["params"], strict=True):
        torch.testing.assert_close(a, b)  # DDP kept the replicas identical
    m0, m1 = r0["metrics"], r1["metrics"]
    assert m0["world_size"] == 2 and m0["train_samples"] == m1["train_samples"] == 32 * (len(r0["indices"]) // 32)
    assert m0["train_samples_global"] == 2 * m0["train_samples"]
    assert m0["val_acc"] == m1["val_acc"]  # reduced over both ranks' halves of the val split
    # each rank's last batch moved its own BN running statistics; evaluation saw rank 0's on both ranks
    assert len(r0["eval_buffers"]) == len(r1["eval_buffers"]) >= 2  # val, then test of the last epoch
    for seen0, seen1 in zip(r0["eval_buffers"], r1["eval_buffers"], strict=True):
        for a, b in zip(seen0, seen1, strict=True):
            assert torch.equal(a, b)
    # the reported train loss is the mean over both ranks' batches, not rank 0's shard
    both = r0["losses"] + r1["losses"]
    assert m0["train_loss"] == m1["train_loss"] == pytest.approx(sum(both) / len(both), rel=1e-9)
    assert sum(r0["losses"]) / len(r0["losses"]) != pytest.approx(m0["train_loss"], rel=1e-9)


def test_one_process_trains_on_every_image_of_the_split():
    tr = Trainer(small(epochs=1, batch_size=64))
    (m,) = tr.fit()
    assert len(tr.data.train_idx) % 64 and m.train_samples == m.train_samples_global == len(tr.data.train_idx)


def test_release_protocol_selects_on_test_and_reports_no_validation():
    tr = Trainer(small(epochs=3, val_fraction=0, eval_test="every"))
    history = tr.fit()
    assert tr.cfg.eval_test == "every" and len(tr.data.train_idx) == len(tr.data.train)
    assert all(m.val_acc is None and m.val_loss is None and m.best_val_acc is None for m in history)
    tests = [m.test_acc for m in history]
    assert all(t is not None for t in tests)
    assert [m.best_test_acc for m in history] == [max(tests[:i + 1]) for i in range(3)]
    best_epoch = max(range(3), key=lambda i: (tests[i], -i))
    assert [m.improved for m in history][best_epoch] and tr.best_state is not None
    tr.model_without_ddp.load_state_dict(tr.best_state)
    assert tr.evaluate("test")[1] == history[-1].best_test_acc  # the kept weights are the best-test epoch's


def test_evaluations_on_val_at_chosen_epochs_and_on_test_with_the_best_weights():
    tr = Trainer(small(epochs=2, evaluation={"kinds": ["calibration", "fgsm"], "images": 64, "epochs": [1]}))
    first, last = tr.fit()
    names = ["clean_acc", "images", "ece", "oe", "nll", "fgsm_acc"]
    assert sorted(first.evaluations) == sorted(f"val_{n}" for n in names)
    assert sorted(last.evaluations) == sorted(f"{s}_{n}" for s in ("val", "test") for n in names)
    assert last.evaluations["test_images"] == 64 and last.evaluations["val_images"] == 64
    assert last.evaluations["test_fgsm_acc"] <= last.evaluations["test_clean_acc"]
    # test evaluations are of the best-validation weights, like best_val_test_acc
    tr.model_without_ddp.load_state_dict(tr.best_state)
    tr.model_without_ddp.eval()
    x, y = tr.data.test.batch(tr.data.test_idx[:64], train=False)
    with torch.no_grad():
        clean = (tr.model_without_ddp(x).argmax(1) == y).double().mean().item() * 100
    assert last.evaluations["test_clean_acc"] == pytest.approx(clean)
    from alignmixup.trainer import metric_columns

    assert set(last.as_dict()) == set(metric_columns(tr.cfg)) | {"gpu_mem_peak_gb"}
