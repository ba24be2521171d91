"""Safe, versioned snapshot files: gzip-compressed JSON, never pickle.

``save_snapshot`` writes everything a :class:`~mprofile_ipy.model.Snapshot` holds (traces,
traceback limit, sample rate, allocation totals, meta) with strings, frames and tracebacks
interned in tables; ``load_snapshot`` gives back an equal snapshot. A file that is empty,
truncated, corrupt, of another format or of a newer format version raises
:class:`SnapshotFormatError` naming the file and the problem; loading never runs code.

Layout (``version`` 1), one JSON object::

    {"format": "mprofile-ipy-snapshot", "version": 1,
     "traceback_limit": int, "sample_rate": int, "meta": {...},
     "strings": [str, ...],                       # file and function names
     "frames": [[file, lineno(, name(, firstlineno))], ...],   # file/name: string ids
     "tracebacks": [[frame id, ...], ...],        # raw order: most recent frame first
     "traces": {"domain": [...], "size": [...], "traceback": [...],
                "total_nframe": [...], "allocator": [...], "thread_id": [...]},
     "allocated": null | [[traceback id, total_nframe, count, size, ...], ...]}

Trace columns are parallel lists; ``allocator``/``thread_id`` are absent when every trace
is a 4-tuple and hold ``null`` where a trace is shorter (4- or 5-tuples), so each raw trace
comes back with its own length.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from operator import itemgetter
from typing import IO, Any

from .errors import SnapshotFormatError
from .model import Snapshot

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SnapshotFormatError", "load_snapshot",
           "save_snapshot"]

FORMAT_NAME = "mprofile-ipy-snapshot"
FORMAT_VERSION = 1

_GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------------------------
# Writing


class _Tables:
    """Interning tables: strings, frames and tracebacks each get a small integer id."""

    def __init__(self) -> None:
        self.strings: dict[str, int] = {}
        self.frames: dict[tuple, int] = {}
        self.frame_rows: list[list] = []
        self.tracebacks: dict[tuple, int] = {}
        self.traceback_rows: list[list[int]] = []
        self.tb_by_id: dict[int, int] = {}  # id(frames object) -> traceback id
        self._keep_alive: list[tuple] = []  # frames objects whose id() is cached

    def string(self, text: Any) -> int | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise TypeError(f"frame file and function names must be str, not {text!r}")
        sid = self.strings.get(text)
        if sid is None:
            sid = self.strings[text] = len(self.strings)
        return sid

    def frame(self, frame: tuple) -> int:
        fid = self.frames.get(frame)
        if fid is None:
            if not isinstance(frame, tuple) or not 2 <= len(frame) <= 4:
                raise TypeError(f"a raw frame must be a 2- to 4-tuple, not {frame!r}")
            row: list[Any] = [self.string(frame[0]), frame[1]]
            if len(frame) > 2:
                row.append(self.string(frame[2]))
            if len(frame) > 3:
                row.append(frame[3])
            fid = self.frames[frame] = len(self.frame_rows)
            self.frame_rows.append(row)
        return fid

    def traceback(self, frames: tuple) -> int:
        tid = self.tb_by_id.get(id(frames))
        if tid is not None:
            return tid
        tid = self.tracebacks.get(frames)
        if tid is None:
            tid = self.tracebacks[frames] = len(self.traceback_rows)
            self.traceback_rows.append([self.frame(f) for f in frames])
        self.tb_by_id[id(frames)] = tid
        self._keep_alive.append(frames)
        return tid


def _encode(snapshot: Snapshot) -> dict[str, Any]:
    tables = _Tables()
    raw = snapshot.traces._traces  # as given: 4-, 5- or 6-tuples come back as they were
    lengths = set(map(len, raw))
    frames_col = list(map(itemgetter(2), raw))
    ids = list(map(id, frames_col))
    for frames in dict(zip(ids, frames_col, strict=True)).values():  # distinct objects only
        tables.traceback(frames)
    columns: dict[str, list] = {
        "domain": list(map(itemgetter(0), raw)),
        "size": list(map(itemgetter(1), raw)),
        "traceback": list(map(tables.tb_by_id.__getitem__, ids)),
        "total_nframe": list(map(itemgetter(3), raw)),
    }
    if lengths == {6}:
        columns["allocator"] = list(map(itemgetter(4), raw))
        columns["thread_id"] = list(map(itemgetter(5), raw))
    elif lengths - {4}:
        columns["allocator"] = [t[4] if len(t) > 4 else None for t in raw]
        columns["thread_id"] = [t[5] if len(t) > 5 else None for t in raw]
    allocated = None
    if snapshot.allocated is not None:
        allocated = [[tables.traceback(entry[0]), *entry[1:]] for entry in snapshot.allocated]
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "traceback_limit": snapshot.traceback_limit,
        "sample_rate": snapshot.sample_rate,
        "meta": snapshot.meta,
        "strings": list(tables.strings),
        "frames": tables.frame_rows,
        "tracebacks": tables.traceback_rows,
        "traces": columns,
        "allocated": allocated,
    }


def save_snapshot(snapshot: Snapshot, filename: str | os.PathLike | IO[bytes]) -> None:
    """Write ``snapshot`` to ``filename`` (a path or a binary file object).

    A path is written through a temporary file then renamed, so a crash never leaves a
    half-written snapshot under the final name. ``meta`` must be JSON-able (str keys;
    tuples come back as lists).
    """
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a Snapshot, not {type(snapshot).__name__}")
    try:
        text = json.dumps(_encode(snapshot), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot save this snapshot: {exc} (meta must hold only JSON values: str keys, "
            "str, int, float, bool, None, lists and dicts)"
        ) from exc
    data = gzip.compress(text.encode("utf-8"), compresslevel=1, mtime=0)
    if hasattr(filename, "write"):
        filename.write(data)  # type: ignore[union-attr]
        return
    path = os.fspath(filename)  # type: ignore[arg-type]
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fp:
            fp.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Reading


def _describe(filename: Any) -> str:
    if hasattr(filename, "read"):
        name = getattr(filename, "name", None)
        return repr(name) if isinstance(name, (str, bytes)) else repr(filename)
    return repr(os.fspath(filename))


def _read_bytes(filename: Any) -> bytes:
    if hasattr(filename, "read"):
        data = filename.read()
        if not isinstance(data, bytes):
            raise TypeError("the file object must be opened in binary mode ('rb')")
        return data
    with open(filename, "rb") as fp:
        return fp.read()


def _decompress(data: bytes, error: Any) -> bytes:
    if not data:
        raise error("the file is empty")
    if data[:2] != _GZIP_MAGIC:
        if data.lstrip()[:1] == b"{":
            return data  # uncompressed JSON, e.g. unpacked by hand with gunzip
        if data[:1] == b"\x80":
            raise error(
                "it looks like a pickle (tracemalloc's Snapshot.dump format); pickles are "
                "never loaded because loading one can run code: load it with "
                "tracemalloc.Snapshot.load and convert it with Snapshot.from_tracemalloc"
            )
        raise error(f"not a gzip file (starts with {data[:8]!r})")
    try:
        return gzip.decompress(data)
    except EOFError as exc:
        raise error("the file is truncated (the compressed data ends early)") from exc
    except (OSError, zlib.error) as exc:
        raise error(f"the compressed data is corrupt ({exc})") from exc


_INT = frozenset({int})
_INT_OR_NULL = frozenset({int, type(None)})


def _int_column(values: Any, name: str, error: Any, *, nullable: bool = False) -> list:
    if not isinstance(values, list):
        raise error(f"traces column {name!r} is not a list")
    allowed = _INT_OR_NULL if nullable else _INT
    if not set(map(type, values)) <= allowed:  # type(), not isinstance: JSON true is no int
        raise error(f"traces column {name!r} holds values that are not integers")
    return values


def _check_ids(ids: list, bound: int, what: str, error: Any) -> None:
    if ids and (min(ids) < 0 or max(ids) >= bound):
        raise error(f"a {what} id is out of range (0..{bound - 1})")


def _decode(doc: Any, error: Any) -> Snapshot:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise error(f"not an mprofile-ipy snapshot (format is {found!r}, "
                    f"expected {FORMAT_NAME!r})")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise error(f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise error(
            f"written by a newer mprofile-ipy (format version {version}; this version reads "
            f"up to {FORMAT_VERSION}): upgrade mprofile-ipy to load it"
        )
    try:
        strings = doc["strings"]
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            raise error("'strings' must be a list of strings")

        def text(sid: Any) -> str | None:
            if sid is None:
                return None
            if type(sid) is not int or not 0 <= sid < len(strings):
                raise error(f"string id {sid!r} is out of range")
            return strings[sid]

        frames = []
        for row in doc["frames"]:
            if not isinstance(row, list) or not 2 <= len(row) <= 4:
                raise error(f"invalid frame {row!r}")
            frame: tuple = (text(row[0]), row[1])
            if len(row) > 2:
                frame += (text(row[2]),)
            if len(row) > 3:
                frame += (row[3],)
            frames.append(frame)

        tracebacks = []
        for row in doc["tracebacks"]:
            if not isinstance(row, list):
                raise error(f"invalid traceback {row!r}")
            _int_column(row, "tracebacks", error)
            _check_ids(row, len(frames), "frame", error)
            tracebacks.append(tuple([frames[i] for i in row]))

        columns = doc["traces"]
        if not isinstance(columns, dict):
            raise error("'traces' must be an object of columns")
        domain = _int_column(columns["domain"], "domain", error)
        size = _int_column(columns["size"], "size", error)
        tb_ids = _int_column(columns["traceback"], "traceback", error)
        total = _int_column(columns["total_nframe"], "total_nframe", error, nullable=True)
        n = len(domain)
        if any(len(col) != n for col in (size, tb_ids, total)):
            raise error("the trace columns have different lengths")
        if size and min(size) < 0:
            raise error("a trace has a negative size")
        _check_ids(tb_ids, len(tracebacks), "traceback", error)
        tb_col = list(map(tracebacks.__getitem__, tb_ids))
        if "allocator" in columns:
            allocator = _int_column(columns["allocator"], "allocator", error, nullable=True)
            thread = _int_column(columns["thread_id"], "thread_id", error, nullable=True)
            if len(allocator) != n or len(thread) != n:
                raise error("the trace columns have different lengths")
            rows = zip(domain, size, tb_col, total, allocator, thread, strict=True)
            if None in set(allocator) or None in set(thread):
                # null allocator: a 4-tuple; null thread_id only: a 5-tuple.
                traces = [
                    (d, s, f, t, a, th) if th is not None
                    else (d, s, f, t) if a is None else (d, s, f, t, a)
                    for d, s, f, t, a, th in rows
                ]
            else:
                traces = list(rows)
        else:
            traces = list(zip(domain, size, tb_col, total, strict=True))

        allocated = None
        if doc.get("allocated") is not None:
            allocated = []
            for row in doc["allocated"]:
                if not isinstance(row, list) or not 4 <= len(row) <= 7:
                    raise error(f"invalid allocation total {row!r:.80}")
                _check_ids([row[0]] if type(row[0]) is int else [-1], len(tracebacks),
                           "traceback", error)
                if not all(isinstance(v, (int, float)) or v is None for v in row[1:]):
                    raise error(f"invalid allocation total {row!r:.80}")
                allocated.append((tracebacks[row[0]], *row[1:]))

        meta = doc.get("meta") or {}
        if not isinstance(meta, dict):
            raise error("'meta' must be an object")
        return Snapshot(traces, doc["traceback_limit"], sample_rate=doc["sample_rate"],
                        allocated=allocated, meta=meta)
    except KeyError as exc:
        raise error(f"the field {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, SnapshotFormatError):
            raise
        raise error(f"invalid content ({exc})") from exc


def load_snapshot(filename: str | os.PathLike | IO[bytes]) -> Snapshot:
    """Read a snapshot written by :func:`save_snapshot` (a path or a binary file object).

    Raises :class:`SnapshotFormatError` (a ``ValueError``) for files that are empty,
    truncated, corrupt, not snapshots, or written by a newer format version, and
    ``OSError`` if the file cannot be read at all.
    """
    where = _describe(filename)

    def error(problem: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"cannot load snapshot {where}: {problem}")

    data = _decompress(_read_bytes(filename), error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error("the content is not UTF-8 text, so not a snapshot") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise error(f"the content is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise error("the content is nested too deeply") from exc
    return _decode(doc, error)

