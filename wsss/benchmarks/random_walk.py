"""Benchmark the boundary-guided random walk (wsss.refine.random_walk) against a sparse-matrix walk.

Times ``boundary_random_walk`` (Eq. 6: affinities from the boundary map, ``(1 - B)``
weighting, propagation) per image, for a batch of ``--batch`` images (delta=5, n=10, 21
classes; time / batch), at map sizes 32x32 (128x128 input at stride 4) and
128x128 (512x512 VOC-scale input at stride 4), for

* ``t = 8`` literal steps, and
* ``2**8 = 256`` steps (IRNet's ``exp_times=8`` / SANCE's ``t=8`` semantics),

with the library's banded propagation and the sparse-CSR one defined here
(``sparse_boundary_random_walk``, same result; the tests compare the two), on CPU and CUDA
when available.  Peak memory: CPU -> ``ru_maxrss`` growth of a fresh subprocess per
configuration (high-water mark, so each config runs in its own process);
CUDA -> ``torch.cuda.max_memory_allocated`` above the inputs.

Usage::

    python -m wsss.benchmarks.random_walk [--sizes 32 128] [--steps 8 256]
        [--methods banded sparse] [--devices cpu cuda] [--reps 3] [--threads 1] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import torch

from wsss.refine.random_walk import affinity_from_boundary, transition_from_affinity, valid_neighbor_mask


# --------------------------------------------------------------------------- the sparse walk


def to_sparse_transition(A: torch.Tensor, offsets) -> torch.Tensor:
    """The transition of ``transition_from_affinity`` as a ``torch.sparse_csr`` matrix of size
    ``(B*h*w, B*h*w)``.

    Block-diagonal over the batch; pixel ``(b, y, x)`` has index ``(b*h + y)*w + x``.
    Use with :func:`sparse_propagate` (``x_new = T @ x`` with ``x`` of shape
    ``(B*h*w, C)``), or for explicit matrix powers on small maps.
    """
    tr = transition_from_affinity(A, offsets)
    B, K, h, w = A.shape
    dev = A.device
    off = torch.cat([tr.offsets, tr.offsets.new_zeros(1, 2)])
    weights = torch.cat([tr.neighbors, tr.self_weight], dim=1)
    # col - row == dy * w + dx for every in-image entry: ordering the offsets by this
    # displacement yields sorted, unique column indices in every row, so the CSR
    # arrays are built directly (no COO sort).
    disp = off[:, 0] * w + off[:, 1]
    order = torch.argsort(disp)
    off, disp, weights = off[order], disp[order], weights[:, order]
    n = B * h * w
    valid = valid_neighbor_mask(off, h, w, device=dev).expand(B, -1, h, w).permute(0, 2, 3, 1)
    rows = torch.arange(n, device=dev).view(B, h, w, 1)
    cols = (rows + disp.view(1, 1, 1, -1)).expand(B, h, w, -1)[valid]
    vals = weights.permute(0, 2, 3, 1)[valid]  # boolean indexing keeps row-major order
    crow = torch.zeros(n + 1, dtype=torch.long, device=dev)
    crow[1:] = valid.reshape(n, -1).sum(dim=1).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, cols, vals, (n, n), check_invariants=False)


def sparse_propagate(scores: torch.Tensor, T: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` random-walk steps with a sparse transition from :func:`to_sparse_transition`."""
    B, C, h, w = scores.shape
    if T.shape[0] != B * h * w:
        raise ValueError(f"transition of size {tuple(T.shape)} does not match scores {tuple(scores.shape)}")
    x = scores.to(T.dtype).permute(0, 2, 3, 1).reshape(B * h * w, C)
    for _ in range(int(steps)):
        x = T @ x
    return x.reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


def sparse_boundary_random_walk(scores: torch.Tensor, boundary: torch.Tensor, radius: float = 5.0,
                                power: float = 10.0, steps: int = 8) -> torch.Tensor:
    """``boundary_random_walk`` with ``steps`` literal steps as CSR matrix products (CSR build
    included), for boundaries ``(B, 1, h, w)``: the same result up to float rounding.

    Timings in docs/findings.md (delta 5, n 10, 21 classes, one image): on 2 CPU threads it
    beats the banded walk for 256 steps (32x32 maps: 22 vs 101 ms; 128x128: 315 vs 616 ms) and
    loses for 8 steps at 128x128 (60 vs 34 ms); on CUDA it is faster throughout (256 steps:
    14 vs 132 ms at 32x32, 25 vs 132 ms at 128x128); it takes about 3x the memory (peak
    growth 85 vs 27 MB on the CPU; 67 vs 18 MB on CUDA at 128x128)."""
    bnd = boundary.to(device=scores.device, dtype=scores.dtype).clamp(0.0, 1.0)
    x = scores.clamp_min(0.0) * (1.0 - bnd)
    A, offs = affinity_from_boundary(bnd, radius=radius, power=power)
    return sparse_propagate(x, to_sparse_transition(A, offs), steps)


# --------------------------------------------------------------------------- timing


def _child(cfg: dict) -> dict:
    import resource

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    from wsss.refine.random_walk import boundary_random_walk

    dev = torch.device(cfg["device"])
    s, C, steps, B = cfg["size"], cfg["classes"], cfg["steps"], cfg["batch"]
    g = torch.Generator().manual_seed(0)
    boundary = torch.rand(B, 1, s, s, generator=g).to(dev)
    scores = torch.rand(B, C, s, s, generator=g).to(dev)

    def run():
        with torch.no_grad():
            if cfg["method"] == "sparse":
                out = sparse_boundary_random_walk(scores, boundary, cfg["radius"], cfg["power"], steps)
            else:
                out = boundary_random_walk(scores, boundary, cfg["radius"], cfg["power"], steps, log2_steps=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    rss0 = rss_mb()
    run()  # warm-up (also the memory measurement)
    peak = {"rss_delta_mb": rss_mb() - rss0}
    if dev.type == "cuda":
        peak["gpu_peak_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    aff_times = []
    for _ in range(cfg["reps"]):
        t0 = time.perf_counter()
        with torch.no_grad():
            affinity_from_boundary(boundary, radius=cfg["radius"], power=cfg["power"])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        aff_times.append(time.perf_counter() - t0)
    aff_times.sort()
    times = []
    for _ in range(cfg["reps"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    per_image = {k: v / B for k, v in peak.items()}
    return {**cfg, **per_image, "median_s": times[len(times) // 2] / B, "min_s": times[0] / B,
            "aff_median_s": aff_times[len(aff_times) // 2] / B,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128], help="map side (h = w)")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 256], help="literal walk steps")
    ap.add_argument("--methods", nargs="+", default=["banded", "sparse"], choices=["banded", "sparse"])
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu (+ cuda if available)")
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--radius", type=float, default=5.0)
    ap.add_argument("--power", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads, default 1 (per-image cost; parallelise over images "
                         "with processes); 0 = torch default")
    ap.add_argument("--batch", type=int, default=1, help="images per call; times and memory are per image")
    ap.add_argument("--json", action="store_true", help="also print raw JSON rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    devices = args.devices
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    rows = []
    for dev in devices:
        for size in args.sizes:
            for steps in args.steps:
                for method in args.methods:
                    cfg = dict(device=dev, size=size, steps=steps, method=method, classes=args.classes,
                               radius=args.radius, power=args.power, reps=args.reps, threads=args.threads,
                               batch=args.batch)
                    proc = subprocess.run([sys.executable, "-m", "wsss.benchmarks.random_walk", "--child", json.dumps(cfg)],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"[{dev} {size} {steps} {method}] failed:\n{proc.stderr}", file=sys.stderr)
                        continue
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    r = rows[-1]
                    print(f"  done {dev} {size}x{size} steps={steps} {method}: {r['median_s']*1e3:.1f} ms",
                          file=sys.stderr, flush=True)

    print(f"\nrandom walk per image: boundary_random_walk (banded) or sparse_boundary_random_walk (sparse) on "
          f"batches of {args.batch}, delta={args.radius:g}, "
          f"n={args.power:g}, C={args.classes}, median of {args.reps} (after 1 warm-up)")
    hdr = f"{'device':6} {'map':>8} {'input@s4':>9} {'steps':>5} {'method':>7} {'thr':>3} " \
          f"{'aff ms':>7} {'total ms':>9} {'min ms':>8} {'ms/step':>8} {'peak MB':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        mem = r.get("gpu_peak_mb", r["rss_delta_mb"])
        kind = "gpu" if "gpu_peak_mb" in r else "rss"
        per_step = (r["median_s"] - r["aff_median_s"]) * 1e3 / max(r["steps"], 1)
        print(f"{r['device']:6} {r['size']:>4}x{r['size']:<3} {r['size'] * 4:>9} {r['steps']:>5} "
              f"{r['method']:>7} {r['threads']:>3} {r['aff_median_s'] * 1e3:>7.1f} "
              f"{r['median_s'] * 1e3:>9.1f} {r['min_s'] * 1e3:>8.1f} {per_step:>8.2f} {mem:>6.1f}{kind[0]}")
    print("aff ms: affinity_from_boundary alone; total: affinity + propagation (sparse: incl. CSR build); "
          "ms/step = (total - aff) / steps")
    print("peak MB: r = ru_maxrss growth during the first call (fresh process), "
          "g = torch.cuda.max_memory_allocated above the inputs")
    if args.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
