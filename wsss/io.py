"""Atomic file output and the VOC palette.

Every artifact the workbench writes goes through these helpers: the bytes land in a temporary
file in the same folder and are renamed into place, so a killed run never leaves a half-written
PNG, checkpoint or JSON behind, and a stage can tell "done" from "interrupted" by existence.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), shape (n, 3) uint8."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


VOC_PALETTE = voc_palette()


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """A label map (H, W) of class indices as a palette PNG, the way VOC stores masks."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError("label values must lie in 0..255")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(VOC_PALETTE.reshape(-1).tolist())
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")


def save_gray_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """A uint8 (H, W) map (saliency, contour) as a grayscale PNG."""
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(tmp, format="PNG")


def save_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    with atomic_path(path, ".jpg") as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB").save(tmp, format="JPEG", quality=quality)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as class indices (palette indices, not colours)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: a label map must be a palette or grayscale PNG, got mode {img.mode}")
        return np.asarray(img, dtype=np.uint8 if img.mode in ("P", "L") else np.int64).astype(np.uint8)


@contextmanager
def exclusive(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_file` (created if missing) for the block.

    Two notebooks run side by side (`wsss demo --jobs 2`, a shell loop of `wsss run ... &`) may
    need the same run; the second waits here and then finds the first one's finished artifacts
    instead of training into the same folder. Ranks of one torchrun job share a run on purpose,
    so under torchrun (WORLD_SIZE > 1) this is a no-op.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[wsss] waiting: another process is busy with {what} ({lock_file.parent})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
