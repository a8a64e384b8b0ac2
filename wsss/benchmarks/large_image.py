"""Multi-scale class maps of one huge photo within the pixel budget: seconds and peak memory.

    python -m wsss.benchmarks.large_image                              # 4000 x 3000, ResNet-50 CAM
    python -m wsss.benchmarks.large_image --size 6000x4000 --max-pixels 8e6 --device cuda

A randomly initialised CAM (the maps' cost does not depend on the weights) on a random image, at
IRNet's test-time scales (1, 0.5, 1.5, 2) with flip, through `wsss.inference.multiscale_maps` under
its budget of input pixels per forward pass (`MAX_SCALED_PIXELS`, or `--max-pixels`): scales whose
image exceeds it run at the largest size that fits. Reported: each pass's input, the seconds, the
resident memory before the call (model and image) and its peak during it (VmHWM), and on CUDA the
peak allocated GPU memory.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from wsss.benchmarks.pipeline import measure, resident_mb
from wsss.inference import MAX_SCALED_PIXELS, multiscale_maps
from wsss.methods.cam import CAM
from wsss.models.backbones import build_backbone
from wsss.train import device_named

SCALES = (1.0, 0.5, 1.5, 2.0)


def run_large_image(width: int, height: int, backbone: str, max_pixels: int, device: torch.device,
                    num_classes: int = 20) -> dict[str, Any]:
    torch.manual_seed(0)
    model = CAM(num_classes, build_backbone(backbone)).to(device).eval()
    image = torch.rand(1, 3, height, width, device=device)
    passes: list[list[int]] = []

    def class_maps(x: torch.Tensor) -> torch.Tensor:
        passes.append(list(x.shape))
        return model.class_maps(x)

    before = resident_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the capped scales are listed in `passes`
        row = measure("class maps", 1, None, device,
                      lambda: multiscale_maps(class_maps, image, SCALES, True, max_pixels))
    return {"size": [width, height], "backbone": backbone, "device": str(device), "threads": torch.get_num_threads(),
            "max_pixels": max_pixels, "scales": list(SCALES), "passes": passes, "seconds": row["seconds"],
            "rss_before_mb": before, "peak_rss_mb": row["peak_rss_mb"], "peak_rss_of_call": row["peak_rss_of_stage"],
            "peak_gpu_mb": row["peak_gpu_mb"]}


def markdown(result: dict[str, Any]) -> str:
    w, h = result["size"]
    passes = ", ".join(f"{n} x {pw}x{ph}" for n, _, ph, pw in result["passes"])
    before = "-" if result["rss_before_mb"] is None else f"{result['rss_before_mb']:.0f} MB"
    gpu = "" if result["peak_gpu_mb"] is None else f"; peak GPU memory {result['peak_gpu_mb']:.0f} MB"
    return (f"{result['backbone']} CAM, a {w}x{h} image, scales {result['scales']} x flip, at most "
            f"{result['max_pixels'] / 1e6:.1f} M input pixels per pass, on {result['device']} "
            f"({result['threads']} thread(s)): {result['seconds']:.1f} s; resident memory {before} before (model and "
            f"image), peak {result['peak_rss_mb']:.0f} MB"
            f"{'' if result['peak_rss_of_call'] else ' (since the process started)'}{gpu}.\nPasses: {passes}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT (default 4000x3000)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--max-pixels", type=float, default=MAX_SCALED_PIXELS,
                        help=f"input pixels per forward pass (default {MAX_SCALED_PIXELS})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    try:
        width, height = (int(n) for n in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size is WIDTHxHEIGHT, e.g. 4000x3000; got {args.size!r}") from None
    result = run_large_image(width, height, args.backbone, int(args.max_pixels), device_named(args.device))
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
