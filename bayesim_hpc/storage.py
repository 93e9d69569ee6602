"""Per-shard HDF5 segments: the durable truth of a result directory.

A worker writes what it retains in *segments*: one HDF5 file per flush, written under a
temporary name, fsynced, then renamed into ``shards/sNNNNN/``. A file with a final name is
therefore complete; a process killed mid-write leaves only a ``*.tmp`` that readers
ignore. Rows carry a SHA-256 checksum (attribute ``rows_sha256``) and heavy datasets the
HDF5 Fletcher-32 filter, so a segment truncated or overwritten later is detected on read
(:class:`CorruptSegment`) instead of being trusted.

Layout of a segment::

    attrs: format, shard_id, attempt, seq, n_rows, host, pid, created, rows_sha256,
           study_generation, study_fingerprint     (which freeze of which study wrote it)
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

Reading a segment fails in one of four ways, and each is handled differently (see
docs/reliability.md): :class:`CorruptSegment` (proven damage: checksum or structure; may be
quarantined), :class:`SegmentReadError` (an I/O error such as EIO: reported, the file is
kept and read again later), :class:`ForeignSegment` (valid, but written for another study
generation, e.g. by a worker that outlived ``--force``: skipped and reported) and
:class:`NewerFormatError` (written by a newer bayesim-hpc: a clear error, nothing is touched).
Every string written is sanitised (:func:`sanitize`): NUL bytes and lone surrogates
cannot make a segment unwritable.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

from .errors import BayesimError
from .records import TaskRecord

__all__ = [
    "SegmentError",
    "CorruptSegment",
    "SegmentReadError",
    "ForeignSegment",
    "NewerFormatError",
    "StorageFullError",
    "sanitize",
    "temp_name",
    "temp_writer",
    "study_stamp",
    "stamp_of_dir",
    "SegmentRows",
    "shard_dir",
    "ensure_shard_dir",
    "write_segment",
    "read_rows",
    "iter_segment_paths",
    "read_task_artifacts",
    "fsync_path",
    "atomic_write_text",
]

FORMAT = 3  # 3: segments carry study_generation/study_fingerprint; 2 is still read
READABLE_FORMATS = (2, 3)
STR_COLS = ("task_id", "status", "error_type", "error_message", "error_stage", "error_traceback")
_STR = h5py.string_dtype("utf-8")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


class SegmentError(Exception):
    """A segment could not be used; subclasses say why (and what may be done with the file)."""


class CorruptSegment(SegmentError):
    """Proven damage: the checksum or the file's structure does not match. Safe to quarantine."""


class SegmentReadError(SegmentError):
    """An I/O error (EIO, ESTALE, ...) while reading: maybe transient. Never a reason to remove it."""


class ForeignSegment(SegmentError):
    """A valid segment that does not belong to this study generation (or names tasks it lacks)."""


class NewerFormatError(BayesimError):
    """A segment written by a newer bayesim-hpc than this one."""


class StorageFullError(BayesimError, OSError):
    """A write failed for lack of space (or quota); the message names the directory."""

    def __str__(self) -> str:
        return str(self.strerror or super().__str__())


#: errnos that say "the storage failed", not "the file is damaged"
_IO_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ESTALE, errno.ETIMEDOUT, errno.EACCES, errno.EPERM, errno.ENOENT,
              errno.EINTR, errno.ENOMEM, errno.EBUSY, errno.ENXIO, errno.ENODEV, errno.EREMOTEIO}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


def _errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, also when HDF5 only mentions it in the message."""
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    m = _ERRNO_IN_TEXT.search(str(exc))
    return int(m.group(1)) if m and int(m.group(1)) else None


def sanitize(text: Any) -> str:
    r"""``text`` as a string HDF5 can always store: NUL shown as ``\x00``, lone surrogates
    (e.g. from non-UTF-8 file names) as ``\udcff``.

    >>> sanitize("a\x00b \udcff")
    'a\\x00b \\udcff'
    """
    s = text if isinstance(text, str) else str(text)
    if s.isascii() and "\x00" not in s:
        return s
    return s.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _writer_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    return f"{os.getpid()}@{host}"


def temp_name(final: Path) -> Path:
    """The temporary name a writer uses for ``final``: hidden, and naming the writer (pid@host),
    so ``clean`` can tell a live writer's file from a dead one's."""
    final = Path(final)
    return final.with_name(f".{final.name}.{secrets.token_hex(3)}.{_writer_tag()}.tmp")


_TEMP_RE = re.compile(r"\.(\d+)@([A-Za-z0-9_.-]+)\.tmp$")


def temp_writer(path: Path) -> tuple[int, str] | None:
    """(pid, host) of the writer named in a temp file's name, or None for an old-style name."""
    m = _TEMP_RE.search(Path(path).name)
    return (int(m.group(1)), m.group(2)) if m else None


_STAMPS: dict[tuple, tuple[str, str]] = {}


def stamp_of_dir(result_dir: Path) -> tuple[str, str]:
    """:func:`study_stamp` of a result directory's study.json, cached while the file is unchanged
    (study.json can be large; workers and executors ask once per shard)."""
    p = Path(result_dir) / "study.json"
    try:
        st = p.stat()
    except FileNotFoundError:
        return ("", "")
    key = (str(p), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _STAMPS:
        try:
            _STAMPS[key] = study_stamp(json.loads(p.read_text()))
        except json.JSONDecodeError:
            return ("", "")
    return _STAMPS[key]


def study_stamp(raw: dict[str, Any]) -> tuple[str, str]:
    """(generation, fingerprint digest) of a frozen study (its study.json as a dict)."""
    fp = hashlib.sha256(json.dumps(raw.get("fingerprint", {}), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return str(raw.get("generation") or ""), fp


def _write_failed(exc: OSError, where: Path) -> BaseException:
    """A write error as what to raise: disk full becomes a clear :class:`StorageFullError`."""
    code = _errno_of(exc)
    if code in _FULL_ERRNOS:
        return StorageFullError(
            code, f"no space left (or quota exceeded) writing to {where}: {os.strerror(code)}. Free space there, "
                  f"then `bayesim-hpc resume <result dir>` finishes the study; nothing written so far is lost")
    return exc


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


def ensure_shard_dir(result_dir: Path, shard_id: int) -> Path:
    """The shard's folder, created if needed with its entry in ``shards/`` made durable."""
    d = shard_dir(result_dir, shard_id)
    if not d.is_dir():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_failed(exc, d.parent) from exc
        fsync_path(d.parent)  # the new folder's entry is durable before files appear in it
    return d


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
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(exc, path.parent) from exc
    fsync_path(path.parent)


def _write_bytes_durably(data: bytes, tmp: Path, final: Path) -> None:
    """Write ``data`` to ``tmp``, fsync, rename to ``final``; on any error remove ``tmp``."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(exc, final.parent) from exc


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
        flat = [sanitize(v) for v in np.asarray(arr, dtype=object).ravel()]
        group.create_dataset(sanitize(name), data=np.array(flat, dtype=object).reshape(arr.shape), dtype=_STR)
        return
    name = sanitize(name)
    if arr.ndim == 0 or arr.size == 0:
        group.create_dataset(name, data=arr)
        return
    group.create_dataset(name, data=arr, compression=compression, fletcher32=True, chunks=True)


def _write_artifacts(f: h5py.File, rec: TaskRecord, dtype: str, compression: str | None) -> None:
    art = rec.artifacts
    keep = {k for k in art if art[k] is not None}
    if not keep:
        return
    g = f.create_group(f"tasks/{sanitize(rec.task_id)}")
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
        sub.attrs["true_params"] = json.dumps(art["data"]["true_params"], default=str)
    if "diagnostics" in keep:
        sub = g.create_group("diagnostics")
        for k, v in art["diagnostics"].items():
            try:
                sub.attrs[sanitize(k)] = float(v)
            except (TypeError, ValueError):
                sub.attrs[sanitize(k)] = json.dumps(v, default=str)
    if "warnings" in keep:
        g.create_dataset("warnings", data=np.array([sanitize(w) for w in art["warnings"]], dtype=object), dtype=_STR)
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
    stamp: tuple[str, str] | None = None,
) -> Path:
    """Write ``records`` durably as one new segment and return its final path.

    ``stamp``: (generation, fingerprint) of the study it belongs to (default: read from
    the result directory's study.json). The file is built in memory and written with plain
    ``write``/``fsync``/``rename``, so a full disk raises :class:`StorageFullError` naming
    the directory and leaves no temp file (HDF5 never sees the I/O error).
    """
    d = ensure_shard_dir(result_dir, shard_id)
    if stamp is None:
        stamp = stamp_of_dir(result_dir)
    final = d / f"a{attempt:03d}-{seq:05d}-{secrets.token_hex(4)}.h5"
    tmp = temp_name(final)
    index = np.array([r.index for r in records], dtype=np.int64)
    attempts = np.array([r.attempt for r in records], dtype=np.int32)
    strings = {c: [sanitize(getattr(r, c)) for r in records] for c in STR_COLS}
    names = sorted({k for r in records for k in r.columns})
    numbers = {n: np.array([r.columns.get(n, np.nan) for r in records], dtype=np.float64) for n in names}
    with h5py.File(final.name, "w", driver="core", backing_store=False, block_size=1 << 22, locking=False) as f:
        f.attrs.update(format=FORMAT, shard_id=shard_id, attempt=attempt, seq=seq, n_rows=len(records),
                       host=sanitize(socket.gethostname()), pid=os.getpid(), created=time.time(),
                       rows_sha256=_rows_digest(index, attempts, strings, numbers),
                       study_generation=stamp[0], study_fingerprint=stamp[1])
        rows = f.create_group("rows")
        rows.create_dataset("index", data=index)
        rows.create_dataset("attempt", data=attempts)
        st = rows.create_dataset("strings", data=np.array([strings[c] for c in STR_COLS], dtype=object).T.reshape(len(records), len(STR_COLS)), dtype=_STR)
        st.attrs["columns"] = json.dumps(list(STR_COLS))
        nm = rows.create_dataset("numbers", data=np.column_stack([numbers[n] for n in names]) if names else np.empty((len(records), 0)))
        nm.attrs["columns"] = json.dumps([sanitize(n) for n in names])
        for r in records:
            _write_artifacts(f, r, draws_dtype, compression)
        f.flush()
        image = f.id.get_file_image()
    _write_bytes_durably(image, tmp, final)
    fsync_path(d)
    return final


def _parse_name(path: Path) -> tuple[int, int]:
    a, s, _ = path.stem.split("-")
    return int(a[1:]), int(s)


def _read_error(path: Path, exc: BaseException) -> SegmentError:
    code = _errno_of(exc)
    if code in _IO_ERRNOS:
        return SegmentReadError(f"{path}: I/O error ({os.strerror(code)}); kept, read again later")
    return CorruptSegment(f"{path}: {type(exc).__name__}: {exc}")


def read_rows(path: Path, columns: Iterable[str] | None = None, *, stamp: tuple[str, str] | None = None,
              n_tasks: int | None = None) -> SegmentRows:
    """The row table of a segment, checksum verified.

    ``stamp``: the (generation, fingerprint) the segment must carry (see :func:`study_stamp`);
    ``n_tasks``: task indices must lie in ``[0, n_tasks)``. Raises :class:`CorruptSegment`,
    :class:`SegmentReadError`, :class:`ForeignSegment` or :class:`NewerFormatError`.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, (int, np.integer)) and int(fmt) > FORMAT:
                raise NewerFormatError(
                    f"{path} was written by a newer bayesim-hpc (segment format {int(fmt)}; this version reads "
                    f"formats up to {FORMAT}). Upgrade bayesim-hpc (pip install -U bayesim-hpc) to read this "
                    "result directory; nothing was changed.")
            if fmt not in READABLE_FORMATS:
                raise CorruptSegment(f"{path}: unknown format {fmt!r}")
            generation = str(f.attrs.get("study_generation", ""))
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
    except (SegmentError, NewerFormatError):
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise _read_error(path, exc) from None
    if stamp is not None and stamp[0] and generation != stamp[0]:  # the fingerprint is informative only
        raise ForeignSegment(f"{path}: written for another study generation ({generation or 'none'}, this "
                             f"study is {stamp[0]}): a worker of a replaced study (--force) wrote it; skipped")
    if n_tasks is not None and index.size and (int(index.min()) < 0 or int(index.max()) >= n_tasks):
        raise ForeignSegment(f"{path}: task index {int(index.max()) if index.max() >= n_tasks else int(index.min())} "
                             f"is outside this study's 0..{n_tasks - 1}; skipped")
    try:
        attempt, seq = _parse_name(path)
    except ValueError:
        raise ForeignSegment(f"{path}: not a segment name (aNNN-NNNNN-xxxxxxxx.h5); skipped") from None
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


def read_segment_rows(path: Path, columns: Iterable[str] | None, stamp: tuple[str, str], n_tasks: int,
                      retries: int = 2, wait: float = 0.2):
    """:func:`read_rows` with this study's checks, retrying I/O errors ``retries`` times."""
    for k in range(retries + 1):
        try:
            return read_rows(path, columns=columns, stamp=stamp, n_tasks=n_tasks)
        except SegmentReadError:
            if k == retries:
                raise
            time.sleep(wait * (k + 1))
    raise AssertionError("unreachable")
