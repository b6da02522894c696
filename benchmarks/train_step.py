"""One training step of PreActResNet-18: erm vs mixup vs alignmixup, and the overhead ratio alignmixup / erm.

Each method has its own Trainer (same seed, same initial weights) on a synthetic CIFAR-10 directory; a round
runs `--steps` steps of every method in turn (order rotated per round) on the same pre-drawn batches, and the
ratio is the median over rounds of t_method / t_erm. `alignmixup` draws its mixing layer from the release's
{input, last stage} like training does; `alignmixup_last` always mixes at the last stage (every step pays for
a Sinkhorn at N = 16 positions): the worst case. `--eps` and `--cost-scaling` set the Sinkhorn (default: the
release's); the table reports the iterations and row marginal error of the aligned steps (Mixer.stats).

    python -m benchmarks.train_step --rounds 5 --steps 2
    python -m benchmarks.train_step --rounds 5 --steps 2 --eps 0.01 --cost-scaling mean \
        --methods erm alignmixup alignmixup_last --tag eps0.01-mean
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from alignmixup.config import SinkhornConfig
from alignmixup.sinkhorn import SinkhornStats
from alignmixup.trainer import Trainer
from benchmarks._machine import add_common_args, interleaved, paired_ratio, print_table, save, setup, stats
from benchmarks._workloads import fixed_batches, make_trainer, synthetic_cifar

METHODS = {  # name -> (Trainer method, mixing layers; None: the release's {0, last})
    "erm": ("erm", None),
    "mixup": ("mixup", None),
    "alignmixup": ("alignmixup", None),
    "alignmixup_last": ("alignmixup", [4]),
}


def stepper(tr: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int, layers: list[int]
            ) -> Callable[[], None]:
    """A closure that runs `steps` training steps, cycling through the batches and recording the mixed layer."""
    state = {"i": 0}

    def run() -> None:
        for _ in range(steps):
            x, y = batches[state["i"] % len(batches)]
            state["i"] += 1
            layers.append(tr.step(x, y)[1].layer)

    return run


def main(argv: list[str] | None = None) -> None:
    """Build one Trainer per method, time them interleaved, print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["erm", "mixup", "alignmixup"], choices=list(METHODS))
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (1.0: 64/128/256/512)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="steps per method per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls (of --steps steps) per method first")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (TrainConfig.compile)")
    parser.add_argument("--eps", type=float, default=0.1, help="Sinkhorn eps")
    parser.add_argument("--cost-scaling", default="none", choices=["none", "mean"])
    parser.add_argument("--sinkhorn-compiled", action="store_true", help="SinkhornConfig(compiled=True)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    if "erm" not in args.methods:
        args.methods.insert(0, "erm")
    sinkhorn = SinkhornConfig(eps=args.eps, cost_scaling=args.cost_scaling, compiled=args.sinkhorn_compiled)
    data = synthetic_cifar(10 * args.batch)  # 90% of it trains: room for the 4 pre-drawn batches
    fns, layers, trainers = {}, {}, {}
    for name in args.methods:
        method, mix_layers = METHODS[name]
        tr = make_trainer(data, method, device, width=args.width, batch_size=args.batch, mix_layers=mix_layers,
                          compile_model=args.compile, sinkhorn=sinkhorn)
        trainers[name] = tr
        tr.model.train()
        layers[name] = []
        fns[name] = stepper(tr, fixed_batches(tr, 4), args.steps, layers[name])
    times = interleaved(fns, device, args.rounds, warmup=args.warmup)
    rows = []
    for name in args.methods:
        step_s = [t / args.steps for t in times[name]]
        timed = layers[name][args.warmup * args.steps:]
        iters, err = SinkhornStats.means(trainers[name].mixer.stats.totals())
        rows.append({
            "method": name, "median_step_ms": 1e3 * stats(step_s)["median"], "min_step_ms": 1e3 * min(step_s),
            "images_per_s": args.batch / stats(step_s)["median"],
            "ratio_vs_erm": paired_ratio(times[name], times["erm"]),
            "ratio_of_medians": stats(times[name])["median"] / stats(times["erm"])["median"],
            "aligned_steps": sum(1 for k in timed if k > 0) if name.startswith("alignmixup") else 0,
            "timed_steps": len(timed), "sinkhorn_iters": iters, "sinkhorn_marginal_err": err,
            "round_times_s": times[name],
        })
    print_table(rows, ["method", "median_step_ms", "min_step_ms", "images_per_s", "ratio_vs_erm",
                       "ratio_of_medians", "aligned_steps", "timed_steps", "sinkhorn_iters", "sinkhorn_marginal_err"])
    notes = [
        f"{args.rounds} interleaved rounds x {args.steps} steps per method (order rotated each round), after "
        f"{args.warmup} untimed call(s) of {args.steps} steps; ratio_vs_erm = median over rounds of t/t_erm",
        "aligned_steps: timed alignmixup steps that mixed at the last stage (Sinkhorn, N=16); the rest mixed pixels",
        "step = Mixer draw + forward (bf16 autocast on CUDA) + mixed loss + backward + SGD step, no data loading",
        f"Sinkhorn: {sinkhorn.model_dump()} (stop rule {sinkhorn.rule}); sinkhorn_iters and sinkhorn_marginal_err: "
        "means over the aligned steps run (warm-up included), from Mixer.stats",
    ]
    save("train_step", device, args, rows, notes)


if __name__ == "__main__":
    main()
