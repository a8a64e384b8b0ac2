"""Training throughput (images/s) and peak memory of methods and backbones on random batches.

    python -m wsss.benchmarks.train                       # every method and the final network, 'small', 96 px
    python -m wsss.benchmarks.train --methods final       # the final network alone (what `wsss ceiling` trains)
    python -m wsss.benchmarks.train --backbone resnet50 --size 128 --methods cam
    python -m wsss.benchmarks.train --device cuda --batch 16
    python -m wsss.benchmarks.train --amp off --threads 1 2   # fp32, on one thread and on two

Random inputs isolate the model's cost from data loading (SynthVOC batches are loaded from an
in-memory cache in training, so the loop adds little). Precision as the training loop's default
(`--amp auto`): bf16 autocast where `wsss.train.fast_bf16` says it is fast (CUDA, CPUs with AMX or AVX-512 BF16);
channels_last (NHWC), as the training loop (`wsss.train.to_device`); `--nchw` measures the plain layout.
"""
from __future__ import annotations

import argparse
import resource
import time
from contextlib import nullcontext

import torch

from wsss.methods.base import WSSSMethod, available_methods, build_method, method_class
from wsss.scale import ScalePolicy
from wsss.train import fast_bf16, to_device

FINAL = "final"  # the final stage's segmentation network, trained on label maps (`wsss.stages.final`)
FINAL_MODELS = {"small": "small_deeplabv3plus", "resnet50": "deeplabv3_resnet50"}  # per --backbone


def build(name: str, num_classes: int, backbone: str, scale: ScalePolicy) -> WSSSMethod:
    """A registered method, or FINAL: the final network the final stage builds on that backbone."""
    if name != FINAL:
        return build_method(name, num_classes, backbone, scale=scale)
    if backbone not in FINAL_MODELS:
        raise ValueError(f"the final network has no model on backbone {backbone!r}; backbones: {sorted(FINAL_MODELS)}")
    from wsss.stages.final import SegmentationNet

    return SegmentationNet(num_classes, FINAL_MODELS[backbone], scale=scale)


def bench(method_name: str, backbone: str, size: int, batch: int, steps: int, warmup: int, device: str,
          amp: bool, num_classes: int = 8, channels_last: bool = True) -> dict[str, float]:
    torch.manual_seed(0)
    # Settings that depend on the image size (radii, rates, scales) as a run on `size` px images has them.
    method = to_device(build(method_name, num_classes, backbone, ScalePolicy(size)), device, channels_last)
    dev_type = torch.device(device).type
    cuda = dev_type == "cuda"
    method.train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    labels = torch.zeros(batch, num_classes, device=device)
    labels[torch.arange(batch), torch.randint(0, num_classes, (batch,))] = 1
    image = torch.randn(batch, 3, size, size, device=device)
    b = {"image": image.contiguous(memory_format=torch.channels_last) if channels_last else image, "label": labels,
         "valid": torch.ones(batch, size, size, dtype=torch.bool, device=device),
         "index": torch.arange(batch), "id": [f"x{i}" for i in range(batch)]}
    if method_name != FINAL and "saliency" in method_class(method_name).requires:
        b["saliency"] = torch.rand(batch, size, size, device=device)
    # Second stages (SANCE) and the final network train on per-image label maps: random ones, some ignored.
    seeds = torch.randint(0, num_classes + 1, (batch, size, size), device=device)
    b["seed_mask"] = b["target_mask"] = torch.where(torch.rand(batch, size, size, device=device) < 0.3, 255, seeds)
    autocast = (lambda: torch.autocast(dev_type, dtype=torch.bfloat16)) if amp else nullcontext
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast():
            loss = method(b, progress=0.5)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_optimizer_step(0.5)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images_per_s": batch * steps / seconds, "s_per_step": seconds / steps, "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=None,
                   help=f"default: every registered method and {FINAL!r}, the final network (on small or resnet50)")
    p.add_argument("--backbone", default="small")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast: auto (where fast, as training), on, off (fp32)")
    p.add_argument("--nchw", action="store_true", help="plain NCHW layout instead of the loop's channels_last")
    p.add_argument("--threads", type=int, nargs="*", default=None, help="CPU threads, one table each (default: torch's)")
    args = p.parse_args()
    methods = args.methods or [m for m in available_methods() if m != "segmentation"] + \
        ([FINAL] if args.backbone in FINAL_MODELS else [])
    amp = fast_bf16(torch.device(args.device)) if args.amp == "auto" else args.amp == "on"
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        print(f"device {args.device}, backbone {args.backbone}, {args.size} px, batch {args.batch}, "
              f"{'bf16' if amp else 'fp32'}, {'NCHW' if args.nchw else 'channels_last'}, {threads} thread{'s' * (threads > 1)}")
        print(f"{'method':<14}{'images/s':>10}{'s/step':>9}{'peak MB':>9}  (peak MB: process RSS on CPU)")
        for name in methods:
            r = bench(name, args.backbone, args.size, args.batch, args.steps, args.warmup, args.device, amp,
                      channels_last=not args.nchw)
            print(f"{name:<14}{r['images_per_s']:>10.1f}{r['s_per_step']:>9.3f}{r['peak_mb']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
