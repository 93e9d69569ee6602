"""Per-shard HDF5 segments: the durable truth of a result directory.

A worker writes what it retains in *segments*: one HDF5 file per flush, written under a
temporary name, fsynced, then renamed into ``shards/sNNNNN/``. A file with a final name is
therefore complete; a process killed mid-write leaves only a ``*.tmp`` that readers
ignore. Rows carry a SHA-256 checksum (attribute ``rows_sha256``) and heavy datasets the
HDF5 Fletcher-32 filter, so a segment truncated or overwritten later is detected on read
(:class:`CorruptSegment`) instead of being trusted.

Layout of a segment::

    attrs: format, shard_id, attempt, seq, n_rows, host, pid, created, rows_sha256
    /rows/index, /rows/attempt            int64 / int32, one per task
    /rows/strings                         (rows, 6) text: task_id, status, error_type, ... (attr columns)
    /rows/numbers                         (rows, k) float64 metric/diagnostic/timing columns (attr columns)
    /tasks/<task_id>/draws/<var>          (chain, draw, ...) arrays       [retain draws]
    /tasks/<task_id>/predictions/<name>                                   [predictions]
    /tasks/<task_id>/data/{train,test}/<col>, attrs true_params           [data]
    /tasks/<task_id>/diagnostics attrs                                    [diagnostics]
    /tasks/<task_id>/warnings             strings                         [warnings]
    /tasks/<task_id>/fit                  opaque bytes: a cloudpickle     [fit]

The retained ``fit`` object is the only pickle in a data file; unpickle only results you
trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

from .task import TaskRecord

__all__ = [
    "CorruptSegment",
    "SegmentRows",
    "shard_dir",
    "write_segment",
    "read_rows",
    "iter_segment_paths",
    "read_task_artifacts",
    "fsync_path",
    "atomic_write_text",
]

FORMAT = 2
STR_COLS = ("task_id", "status", "error_type", "error_message", "error_stage", "error_traceback")
_STR = h5py.string_dtype("utf-8")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


class CorruptSegment(Exception):
    """A segment file cannot be read or fails its checksum."""


@dataclass
class SegmentRows:
    path: Path
    shard_id: int
    attempt: int
    seq: int
    index: np.ndarray
    attempts: np.ndarray
    strings: dict[str, list[str]]
    numbers: dict[str, np.ndarray]

    @property
    def n_rows(self) -> int:
        return int(self.index.size)


def shard_dir(result_dir: Path, shard_id: int) -> Path:
    return Path(result_dir) / "shards" / f"s{shard_id:05d}"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (after a rename), to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _rows_digest(index: np.ndarray, attempts: np.ndarray, strings: dict[str, Sequence[str]],
                 numbers: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(index, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(attempts, dtype="<i4").tobytes())
    for name in sorted(strings):
        h.update(name.encode())
        h.update("\x1f".join(strings[name]).encode())
    for name in sorted(numbers):
        h.update(name.encode())
        h.update(np.ascontiguousarray(numbers[name], dtype="<f8").tobytes())
    return h.hexdigest()


def _write_array(group: h5py.Group, name: str, value: Any, dtype: str, compression: str | None) -> None:
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and dtype == "float32":
        arr = arr.astype(np.float32)
    if arr.dtype.kind in "OUS":
        group.create_dataset(name, data=np.asarray(arr, dtype=object).astype(str).astype(object), dtype=_STR)
        return
    if arr.ndim == 0 or arr.size == 0:
        group.create_dataset(name, data=arr)
        return
    group.create_dataset(name, data=arr, compression=compression, fletcher32=True, chunks=True)


def _write_artifacts(f: h5py.File, rec: TaskRecord, dtype: str, compression: str | None) -> None:
    art = rec.artifacts
    keep = {k for k in art if art[k] is not None}
    if not keep:
        return
    g = f.create_group(f"tasks/{rec.task_id}")
    for kind in ("draws", "predictions"):
        if kind in keep:
            sub = g.create_group(kind)
            for name, arr in art[kind].items():
                _write_array(sub, name, arr, dtype, compression)
    if "data" in keep:
        sub = g.create_group("data")
        for split in ("train", "test"):
            s = sub.create_group(split)
            for name, arr in art["data"][split].items():
                _write_array(s, name, arr, dtype, compression)
        sub.attrs["true_params"] = json.dumps(art["data"]["true_params"])
    if "diagnostics" in keep:
        sub = g.create_group("diagnostics")
        for k, v in art["diagnostics"].items():
            try:
                sub.attrs[str(k)] = float(v)
            except (TypeError, ValueError):
                sub.attrs[str(k)] = json.dumps(v, default=str)
    if "warnings" in keep:
        g.create_dataset("warnings", data=np.array(art["warnings"], dtype=object), dtype=_STR)
    if "fit" in keep:
        g.create_dataset("fit", data=np.frombuffer(art["fit"], dtype=np.uint8), fletcher32=True, chunks=True)


def write_segment(
    result_dir: Path,
    shard_id: int,
    attempt: int,
    seq: int,
    records: Sequence[TaskRecord],
    *,
    draws_dtype: str = "float64",
    compression: str | None = None,
) -> Path:
    """Write ``records`` durably as one new segment and return its final path."""
    d = shard_dir(result_dir, shard_id)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"a{attempt:03d}-{seq:05d}-{secrets.token_hex(4)}.h5"
    tmp = d / f".{final.name}.tmp"
    index = np.array([r.index for r in records], dtype=np.int64)
    attempts = np.array([r.attempt for r in records], dtype=np.int32)
    strings = {c: [str(getattr(r, c)) for r in records] for c in STR_COLS}
    names = sorted({k for r in records for k in r.columns})
    numbers = {n: np.array([r.columns.get(n, np.nan) for r in records], dtype=np.float64) for n in names}
    with h5py.File(tmp, "w", locking=False) as f:
        f.attrs.update(format=FORMAT, shard_id=shard_id, attempt=attempt, seq=seq, n_rows=len(records),
                       host=socket.gethostname(), pid=os.getpid(), created=time.time(),
                       rows_sha256=_rows_digest(index, attempts, strings, numbers))
        rows = f.create_group("rows")
        rows.create_dataset("index", data=index)
        rows.create_dataset("attempt", data=attempts)
        st = rows.create_dataset("strings", data=np.array([strings[c] for c in STR_COLS], dtype=object).T.reshape(len(records), len(STR_COLS)), dtype=_STR)
        st.attrs["columns"] = json.dumps(list(STR_COLS))
        nm = rows.create_dataset("numbers", data=np.column_stack([numbers[n] for n in names]) if names else np.empty((len(records), 0)))
        nm.attrs["columns"] = json.dumps(names)
        for r in records:
            _write_artifacts(f, r, draws_dtype, compression)
    fsync_path(tmp)
    os.rename(tmp, final)
    fsync_path(d)
    return final


def _parse_name(path: Path) -> tuple[int, int]:
    a, s, _ = path.stem.split("-")
    return int(a[1:]), int(s)


def read_rows(path: Path, columns: Iterable[str] | None = None) -> SegmentRows:
    """The row table of a segment, checksum verified. Raises :class:`CorruptSegment`."""
    path = Path(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise CorruptSegment(f"{path}: unknown format {f.attrs.get('format')!r}")
            rows = f["rows"]
            index = rows["index"][...]
            attempts = rows["attempt"][...]
            str_arr = rows["strings"].asstr()[...]
            strings = {c: str_arr[:, j].tolist() for j, c in enumerate(json.loads(rows["strings"].attrs["columns"]))}
            num_arr = rows["numbers"][...]
            numbers = {c: num_arr[:, j] for j, c in enumerate(json.loads(rows["numbers"].attrs["columns"]))}
            if int(f.attrs["n_rows"]) != index.size:
                raise CorruptSegment(f"{path}: holds {index.size} rows, header says {f.attrs['n_rows']}")
            if _rows_digest(index, attempts, strings, numbers) != f.attrs["rows_sha256"]:
                raise CorruptSegment(f"{path}: row checksum mismatch")
            shard_id = int(f.attrs["shard_id"])
    except CorruptSegment:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise CorruptSegment(f"{path}: {type(exc).__name__}: {exc}") from None
    attempt, seq = _parse_name(path)
    if columns is not None:
        wanted = set(columns)
        numbers = {k: v for k, v in numbers.items() if k in wanted}
    return SegmentRows(path, shard_id, attempt, seq, index, attempts, strings, numbers)


def iter_segment_paths(result_dir: Path, shard_id: int | None = None) -> Iterator[Path]:
    """Final segment paths in a stable order (by shard, then name); temp files skipped."""
    base = Path(result_dir) / "shards"
    if not base.is_dir():
        return
    dirs = [shard_dir(result_dir, shard_id)] if shard_id is not None else sorted(base.iterdir())
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix == ".h5" and not p.name.startswith("."):
                yield p


def _read_group(g: h5py.Group) -> dict[str, np.ndarray]:
    out = {}
    for k in g:
        v = g[k][()]
        if isinstance(v, np.ndarray) and v.dtype == object:
            v = np.array([s.decode() if isinstance(s, bytes) else s for s in v])
        out[k] = v
    return out


def read_task_artifacts(path: Path, task_id: str) -> dict[str, Any]:
    """The retained artifacts of one task from one segment (empty dict if none)."""
    with h5py.File(path, "r", locking=False) as f:
        if f"tasks/{task_id}" not in f:
            return {}
        g = f[f"tasks/{task_id}"]
        out: dict[str, Any] = {}
        for kind in ("draws", "predictions"):
            if kind in g:
                out[kind] = _read_group(g[kind])
        if "data" in g:
            out["data"] = {s: _read_group(g["data"][s]) for s in ("train", "test")}
            out["data"]["true_params"] = json.loads(g["data"].attrs["true_params"])
        if "diagnostics" in g:
            out["diagnostics"] = dict(g["diagnostics"].attrs)
        if "warnings" in g:
            out["warnings"] = [s.decode() if isinstance(s, bytes) else s for s in g["warnings"][...]]
        if "fit" in g:
            out["fit_bytes"] = g["fit"][...].tobytes()
        return out
