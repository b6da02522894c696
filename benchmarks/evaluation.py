"""Cost of the evaluations beyond top-1 (alignmixup.evaluation): seconds per 1,000 images, PreActResNet-18 at 32x32.

Candidates, each one `evaluation_totals` call over the same pre-built batches: `clean` (kinds=[calibration]:
the clean forward under no_grad, which is all calibration costs), `fgsm` (one forward with the input
gradient, reused as the clean forward, and one forward of the adversarial batch), `pgd10` (the clean forward,
10 forward+input-gradient steps, one forward of the final iterate) and `all` (the three together, what a trial
pays per evaluated split). Random weights and random images: the cost does not depend on either. The model is
in eval mode and channels_last; bf16 autocast on CUDA as in the trainer. Ratios are paired per round vs clean.

    python -m benchmarks.evaluation --widths 1.0 0.25 --images 128 --rounds 3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from alignmixup.config import EvaluationConfig
from alignmixup.data import CIFAR_MEAN, CIFAR_STD, Normalization
from alignmixup.evaluation import evaluation_totals
from alignmixup.models import build_model
from benchmarks._machine import add_common_args, device_name, interleaved, paired_ratio, print_table, save, setup, stats

CANDIDATES: dict[str, list[str]] = {
    "clean": ["calibration"],
    "fgsm": ["fgsm"],
    "pgd10": ["pgd"],
    "all": ["calibration", "fgsm", "pgd"],
}


def batches(images: int, batch: int, device: torch.device, norm: Normalization
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random CIFAR-sized images normalised as the data pipeline does (channels_last), with random labels."""
    gen = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (images, 32, 32, 3), generator=gen, dtype=torch.uint8).to(device)
    x = norm.from_pixels(u8.permute(0, 3, 1, 2).float() / 255)  # NCHW view of NHWC memory: channels_last
    y = torch.randint(0, 10, (images,), generator=gen).to(device)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, images, batch)]


def evaluator(model: torch.nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], norm: Normalization,
              cfg: EvaluationConfig, autocast: torch.autocast) -> Callable[[], None]:
    """A closure running one evaluation of every batch."""

    def run() -> None:
        evaluation_totals(model, data, norm, cfg, autocast)

    return run


def main(argv: list[str] | None = None) -> None:
    """Time each evaluation per width, interleaved; print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25], help="PreActResNet-18 widths")
    parser.add_argument("--images", type=int, default=128, help="images per timed call (figures are per 1,000)")
    parser.add_argument("--batch", type=int, default=128, help="evaluation batch size")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per candidate first")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    norm = Normalization(CIFAR_MEAN, CIFAR_STD)
    data = batches(args.images, args.batch, device, norm)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for width in args.widths:
        torch.manual_seed(0)
        model = build_model("preactresnet18", 10, width).to(device, memory_format=torch.channels_last).eval()
        fns = {name: evaluator(model, data, norm, EvaluationConfig(kinds=kinds, pgd_steps=args.pgd_steps), autocast)
               for name, kinds in CANDIDATES.items()}
        times = interleaved(fns, device, args.rounds, warmup=args.warmup)
        for name in CANDIDATES:
            per_1000 = [t * 1000 / args.images for t in times[name]]
            rows.append({
                "width": width, "evaluation": name, "s_per_1000_images": stats(per_1000)["median"],
                "min_s_per_1000": min(per_1000), "ratio_vs_clean": paired_ratio(times[name], times["clean"]),
                "round_times_s": times[name],
            })
    print(f"device: {device_name(device)}")
    print_table(rows, ["width", "evaluation", "s_per_1000_images", "min_s_per_1000", "ratio_vs_clean"])
    notes = [
        f"{args.rounds} interleaved rounds (order rotated each round) after {args.warmup} untimed call(s); "
        f"{args.images} images per call in batches of {args.batch}, scaled to 1,000; ratio = median of t/t_clean",
        "clean = calibration alone (no_grad forward); fgsm reuses its gradient forward as the clean forward; "
        f"pgd10 = clean forward + {args.pgd_steps} forward+input-gradient steps + final forward; all = the three",
        "eps 8/255, step 2/255, random start (EvaluationConfig defaults at 32x32); bf16 autocast on CUDA only",
    ]
    save("evaluation", device, args, rows, notes)


if __name__ == "__main__":
    main()
