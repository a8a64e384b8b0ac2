"""Atomic file output, the VOC palette, and the checked readers of id lists, label maps and labels.

Every artifact the workbench writes goes through these helpers: the bytes land in a temporary
file in the same folder and are renamed into place, so a killed run never leaves a half-written
PNG, checkpoint or JSON behind, and a stage can tell "done" from "interrupted" by existence.
The readers turn every malformed input into a `DatasetError` that names the file.
"""
from __future__ import annotations

import codecs
import json
import os
import pickle
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.paths import portable

try:  # numpy >= 2 pickles name numpy._core; numpy 1.x files name numpy.core (same functions)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

IGNORE_INDEX = 255
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class DatasetError(ValueError):
    """A data file is missing or malformed; the message names the file."""


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
    """Uncompressed: class maps (float16, smooth but noisy in the low bits) shrink by only a third
    under zlib, which costs 10x the time of writing them (22 vs 2.3 ms for a 256 x 192 two-class
    map; 2.8 vs 1.3 ms to read), enough to make saving the bottleneck of inference on a GPU."""
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 class indices (palette indices, not colours).

    16-bit grayscale is accepted while every value fits 0..255: a larger one would wrap modulo 256
    into a wrong but valid-looking class. Undecodable (e.g. truncated) files raise a DatasetError
    naming the file; PIL's own message does not.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} does not exist")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"{path}: a label map must be a palette or grayscale PNG, got mode {img.mode}")
            img.load()
            label = np.array(img)  # a copy: callers may write into it
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"label map {path} cannot be read: {exc}") from exc
    if label.dtype != np.uint8:
        low, high = (int(label.min()), int(label.max())) if label.size else (0, 0)
        if low < 0 or high > 255:
            raise DatasetError(f"label map {path} holds values {low}..{high}; class indices must lie in 0..255 "
                               "(255 = ignore)")
        label = label.astype(np.uint8)
    return label


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids of a VOC-style list: one per line, a second column (class-wise lists) dropped.

    A UTF-8 BOM, blank lines and surrounding whitespace are skipped. A repeated id (it would count
    twice in training and in the scores) and an id that is not a plain file name (ids become
    `<id>.png` / `<id>.npz` inside run folders, so '/' or '..' would write outside them) are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"id list {path} is not UTF-8 text: {exc}") from exc
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"id list {path} is empty")
    unsafe = [i for i in ids if i in (".", "..") or any(c in i for c in "/\\\0")]
    if unsafe:
        raise DatasetError(f"id list {path}: {len(unsafe)} id(s) are not plain file names "
                           f"(no '/', '\\' or '..'), e.g. {unsafe[:3]}")
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DatasetError(f"id list {path} lists {len(repeated)} id(s) more than once, e.g. {repeated[:5]}")
    return ids


# The only globals np.save of {image id: ndarray} pickles: array and dtype reconstruction, numpy
# scalars (IRNet's np.int32 ids) and, in protocol-2 files, bytes via _codecs.encode.
_LABEL_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _LabelDictUnpickler(pickle.Unpickler):
    """Refuses every global but numpy's array reconstruction, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _LABEL_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"its pickle would call {module}.{name}, which a label dict never "
                                         "holds (refused, not run)") from None


def load_label_dict(path: str | os.PathLike) -> dict[Any, np.ndarray]:
    """Read a cls_labels.npy: np.save of {image id (str, or IRNet's int 2007000032): multi-hot vector}.

    Such a file is a pickle, and np.load(allow_pickle=True) runs whatever code a crafted one holds:
    the payload is unpickled with only numpy's array globals allowed. Vectors come back as 1-D
    float32 and must hold only 0 and 1 (NaN or 3.0 is an error naming the file and the id).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    expected = "expected np.save of a dict {image id: multi-hot label vector} (IRNet / EPS cls_labels.npy)"
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            raw = _LabelDictUnpickler(f).load() if dtype.hasobject else None
    except Exception as exc:  # a bad header or pickle raises any of a dozen types
        raise DatasetError(f"{path} is not a dict saved with np.save: {exc}; {expected}") from exc
    if raw is None:
        raise DatasetError(f"{path} is not a dict saved with np.save: it holds a {dtype} array of shape {shape}; "
                           f"{expected}")
    content = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
    if not isinstance(content, dict):
        what = f"an object array of shape {raw.shape}" if isinstance(content, np.ndarray) else type(content).__name__
        raise DatasetError(f"{path} is not a dict saved with np.save: it holds {what}; {expected}")
    labels: dict[Any, np.ndarray] = {}
    for key, vec in content.items():
        try:
            vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: label of {key!r} is not a numeric vector ({exc})") from exc
        bad = vec[(vec != 0) & (vec != 1)]  # NaN compares unequal to both
        if bad.size:
            raise DatasetError(f"{path}: label vector of {key!r} holds {float(bad[0])}; "
                               "entries must be 0 or 1 (multi-hot)")
        labels[key] = vec
    return labels


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
            print(f"[wsss] waiting: another process is busy with {what} ({portable(lock_file.parent)})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_csv_rows(path: str | os.PathLike, numeric: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a CSV table, the `numeric` columns as numbers (an int where the cell was written as
    one, e.g. a seed count, so a merge writes it back unchanged; else a float); [] when the file does
    not exist."""
    import csv

    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (_number(v) if k in numeric else v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def merge_csv_rows(path: str | os.PathLike, rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], Any],
                   order: Callable[[dict[str, Any]], Any], numeric: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Add `rows` to the CSV table at `path`, replacing earlier rows with the same `key`, sorted by
    `order`, under a lock (studies side by side write the same table); returns the table's rows.

    A replaced row whose values change (when and by which code it was measured aside) is appended
    to `<stem>_history.csv` beside the table: a rerun on other code or another machine never loses
    the result it replaces."""
    path = Path(path)
    with exclusive(path.parent / f".{path.stem}.lock", f"the table {path.name}"):
        merged = {key(r): r for r in read_csv_rows(path, numeric)}
        replaced = [merged[key(r)] for r in rows if key(r) in merged and _result(merged[key(r)]) != _result(r)]
        merged.update({key(r): r for r in rows})
        if replaced:
            history = path.with_name(f"{path.stem}_history.csv")
            _write_csv(history, read_csv_rows(history) + replaced)
        table = sorted(merged.values(), key=order)
        _write_csv(path, table)
    return table


PROVENANCE = ("measured", "code_version")  # columns saying when and by what a row was measured, not what


def _result(row: dict[str, Any]) -> dict[str, str]:
    """The row's values, numbers as floats whether read or new (5 and "5.0" agree), without
    provenance and empty cells (a column added later leaves older rows empty)."""
    return {k: _canonical(v) for k, v in row.items() if k not in PROVENANCE and v not in ("", None)}


def _canonical(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """`rows` under the union of their columns (in first-seen order), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
