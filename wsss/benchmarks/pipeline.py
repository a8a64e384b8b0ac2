"""The CAM pipeline as a user runs it, on files: images/s per stage, data-loader stall, peak memory.

    python -m wsss.benchmarks.pipeline                      # CPU: a bounded subset of the full preset
    python -m wsss.benchmarks.pipeline --device cuda --train-images all --val-images all \\
        --epochs 5 --workers 8                              # a GPU: the whole CAM stage of the full preset

Every stage is the library's own code (`wsss.experiment.Experiment`) on SynthVOC's `full` preset
(images of VOC's shapes, long side 256 px, JPEGs on disk; `--train-images N` writes a tree with the
first N training images of the same generator instead of all 10,000):

1. **stage 1**: CAM training with the real augmentations (random rescale, flip, colour jitter, crops of
   `--crop` px, 448 by default as IRNet's), `--workers` DataLoader processes, pinned memory on CUDA,
   bf16 autocast where it is fast (`wsss.train.fast_bf16`), channels_last;
2. **class maps** of train: multi-scale + flip inference (the run's scales after the scale policy),
   one npz per image, images read by the same number of worker processes;
3. **sweep**: the background-threshold sweep on train;
4. **class maps** of val, and 5. **evaluate**: val scored at the threshold chosen on train.

Per stage: seconds, images/s, the seconds the loop waited for its next batch (`wsss.progress.DATA_WAIT`:
the loader's stall, when the device sits idle), the stage's peak resident memory of the main
process (its loader processes share most of their pages with it) and, on CUDA, the stage's peak
allocated GPU memory. The runs go
to a temporary folder, so every benchmark trains afresh; the dataset is cached in `data/`.
The goal on one H100-class GPU: stage 1 at 448 px, batch 16, bf16 at 240 images/s or more, and
stages 1-5 (5 epochs) in under 5 minutes, with the loader's stall a small share of each stage.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from wsss.data import synthvoc
from wsss.experiment import Experiment, ExperimentConfig
from wsss.paths import data_dir
from wsss.progress import DATA_WAIT
from wsss.train import device_named, fast_bf16

PRESET = "full"


def benchmark_data(train_images: int | None, val_images: int | None, progress: bool = True) -> tuple[Path, float]:
    """The full preset's tree (None: all of a split's images) or a cut of it, and the seconds
    writing it took (0 when it was on disk)."""
    full = synthvoc.make_config(PRESET)
    n_train = full.n_train if train_images is None else train_images
    n_val = full.n_val if val_images is None else val_images
    if (n_train, n_val) == (full.n_train, full.n_val):
        root = synthvoc.default_root(PRESET, 0)
        overrides: dict[str, int] = {}
    else:
        root = data_dir() / f"synthvoc-{PRESET}-s0-train{n_train}-val{n_val}"
        overrides = dict(n_train=n_train, n_val=n_val, n_test=0)
    t0 = time.perf_counter()
    existed = (root / "meta.json").is_file()
    synthvoc.generate(root, PRESET, 0, progress=progress, workers=os.cpu_count() or 1, **overrides)
    return root, 0.0 if existed else time.perf_counter() - t0


def _reset_peak_rss() -> bool:
    """Restart this process's resident-memory high-water mark (Linux: VmHWM, reset through
    clear_refs), so that each stage reports its own peak; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """The high-water resident memory of this process in MB: since the last reset where there
    was one, else since it started."""
    peak = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak  # Linux, BSD: kB


def resident_mb() -> float | None:
    """This process's resident memory now, in MB (None off Linux)."""
    return _status_mb("VmRSS")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure(name: str, images: int, wait_loop: str | None, device: torch.device,
            work: Callable[[], Any]) -> dict[str, Any]:
    """Run one stage and return its row: seconds, images/s, loader stall, peak memory."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    waited_before = DATA_WAIT.get(wait_loop, 0.0) if wait_loop else 0.0
    own_peak = _reset_peak_rss()
    t0 = time.perf_counter()
    work()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    wait = DATA_WAIT.get(wait_loop, 0.0) - waited_before if wait_loop else None
    return {"stage": name, "images": images, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
            "loader_wait_s": wait, "loader_wait_share": None if wait is None else wait / max(seconds, 1e-9),
            "peak_rss_mb": _peak_rss_mb(), "peak_rss_of_stage": own_peak,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    device = device_named(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    root, data_seconds = benchmark_data(args.train_images, args.val_images, progress=not args.quiet)
    amp = fast_bf16(device) if args.amp == "auto" else args.amp == "on"
    if args.run_root:
        return _run_stages(args, device, root, data_seconds, amp, args.run_root)
    with tempfile.TemporaryDirectory(prefix="wsss-pipeline-") as run_root:
        return _run_stages(args, device, root, data_seconds, amp, run_root)


def _run_stages(args: argparse.Namespace, device: torch.device, root: Path, data_seconds: float, amp: bool,
                run_root: str) -> dict[str, Any]:
    config = ExperimentConfig.for_preset(
        PRESET, method="cam", backbone=args.backbone, data_root=str(root), crop_size=args.crop,
        epochs=args.epochs, batch_size=args.batch, num_workers=args.workers, amp=amp, device=args.device,
        run_root=run_root)
    run = Experiment(config, progress=not args.quiet)
    n_train, n_val = len(run.dataset("train", train=True)), len(run.dataset("val"))
    steps = args.epochs * (n_train // args.batch)
    rows = [
        measure("stage 1: train", steps * args.batch, "train", device, run.train),
        measure("class maps (train)", n_train, "class_maps", device, lambda: run.class_maps("train")),
        measure("threshold sweep (train)", n_train, None, device, lambda: run.sweep("train")),
        measure("class maps (val)", n_val, "class_maps", device, lambda: run.class_maps("val")),
        measure("evaluate (val)", n_val, None, device, lambda: run.evaluate("val")),
    ]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "backbone": args.backbone,
        "crop": args.crop, "batch": args.batch, "epochs": args.epochs, "workers": args.workers,
        "precision": "bf16" if amp else "fp32", "train_images": n_train, "val_images": n_val,
        "scales": list(run.tta_scales()), "data": str(root), "data_write_s": data_seconds,
        "cam_stage_s": sum(r["seconds"] for r in rows), "val_miou": run.evaluate("val")["miou"],
        "stages": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [f"{result['backbone']} on {result['device']} ({result['threads']} threads), {result['precision']}, "
             f"crops {result['crop']} px, batch {result['batch']}, {result['epochs']} epoch(s), "
             f"{result['workers']} loader processes; {result['train_images']} train / {result['val_images']} val "
             f"images; test-time scales {result['scales']} x flip",
             "",
             "| stage | images | seconds | images/s | loader wait, s (share) | peak RSS, MB | peak GPU, MB |",
             "|---|---|---|---|---|---|---|"]
    for r in result["stages"]:
        wait = "-" if r["loader_wait_s"] is None else f"{r['loader_wait_s']:.1f} ({r['loader_wait_share']:.0%})"
        lines.append(f"| {r['stage']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | {wait} | "
                     f"{r['peak_rss_mb']:.0f}{'' if r['peak_rss_of_stage'] else ' (so far)'} | "
                     f"{num(r['peak_gpu_mb'], '.0f')} |")
    lines += ["", f"CAM stage (1-5): {result['cam_stage_s']:.1f} s; val mIoU {100 * result['val_miou']:.1f} "
                  f"(a benchmark's short training: a check that the stages ran, not a result); writing the data "
                  f"took {result['data_write_s']:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--train-images", default=None,
                        help="train images: a number, or 'all' (10,000); default all on CUDA, 32 on a CPU")
    parser.add_argument("--val-images", default=None, help="val images: a number or 'all' (1,449); default all "
                                                           "on CUDA, 16 on a CPU")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--crop", type=int, default=448)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader processes (default: the CPU count - 1, at most 8)")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                        help="bf16 autocast: auto = where it is fast (CUDA, CPUs with AMX or AVX-512 BF16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--run-root", default=None, help="where the runs go (default: a temporary folder, "
                                                          "removed at the end)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cuda = device_named(args.device).type == "cuda"

    def count(value: str | None, cpu_default: int, minimum: int) -> int | None:
        """None: every image of the split."""
        if value is None:
            return None if cuda else cpu_default
        if value == "all":
            return None
        if not value.isdigit() or int(value) < minimum:
            raise SystemExit(f"image counts are 'all' or a number of at least {minimum}, got {value!r}")
        return int(value)

    args.train_images = count(args.train_images, 32, args.batch)  # at least one training batch
    args.val_images = count(args.val_images, 16, 1)
    if args.workers is None:
        args.workers = max(0, min(8, (os.cpu_count() or 1) - 1))
    result = run_pipeline(args)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
