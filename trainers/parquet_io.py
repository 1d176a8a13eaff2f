"""Parquet files that notice their own damage: written with page checksums and a digest of
their content, verified on every read.

Page checksums (CRC32 per data page, the Parquet format's own) catch damaged data; the
digest (sha256 of the table's columns, types and metadata, kept in the file's key-value
metadata) also catches damage to the footer that the pages' checksums do not cover, which
otherwise reads back as silently different columns or types. A file without a digest (one
written before this module) is still read, with whatever its pages carry. Every failure to
read a file that exists, whatever pyarrow raises, is one `DamagedParquet`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from trainers.atomic import replace_atomically
from trainers.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

DIGEST_KEY = b"onorm.sha256"


class DamagedParquet(UserError):
    """A Parquet file that cannot be read back as it was written; `reason` says how."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)   # one argument: it pickles
        self.reason = reason


def digest(table: "pa.Table") -> bytes:
    """sha256 over the column names, types, values and nulls, and the schema's metadata
    (without the digest itself); the same for a table and its round trip through Parquet."""
    import numpy as np
    import pyarrow as pa

    h = hashlib.sha256()
    metadata = dict(table.schema.metadata or {})
    metadata.pop(DIGEST_KEY, None)
    for key in sorted(metadata):
        h.update(b"meta\0" + key + b"\0" + metadata[key] + b"\0")
    for name, column in zip(table.column_names, table.columns):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        h.update(f"col\0{name}\0{array.type}\0{len(array)}\0".encode())
        if pa.types.is_null(array.type):
            continue
        h.update(np.asarray(array.is_null()).tobytes())
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            filled = array.fill_null("")
            offsets = np.frombuffer(filled.buffers()[1],
                                    dtype=np.int64 if pa.types.is_large_string(array.type)
                                    else np.int32)[filled.offset:filled.offset + len(filled) + 1]
            h.update(np.diff(offsets).astype(np.int64).tobytes())
            h.update(filled.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
                     if len(filled) else b"")
        elif (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
              or pa.types.is_boolean(array.type)):
            filled = array.fill_null(False if pa.types.is_boolean(array.type) else 0)
            h.update(np.asarray(filled).tobytes())
        else:   # types the project does not write; slow but exact
            h.update(repr(array.to_pylist()).encode())
    return h.hexdigest().encode()


def _digested(df: "pd.DataFrame") -> "pa.Table":
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          DIGEST_KEY: digest(table)})


def parquet_bytes(df: "pd.DataFrame") -> bytes:
    """`df` as a Parquet file's bytes, with page checksums and the content digest (for
    storage written in one piece, such as an object store's PUT)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(_digested(df), sink, write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def write_parquet_atomic(df: "pd.DataFrame", path: str | Path) -> None:
    """Write `df` to `path` so readers see the old file or the new one, never half of one,
    with page checksums and the content digest."""
    import pyarrow.parquet as pq

    table = _digested(df)
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))


def read_table(path: str | Path, columns: Sequence[str] | None = None,
               required: Sequence[str] = ()) -> "pa.Table":
    """The file's table, verified (page checksums, digest); `columns` selects afterwards.

    FileNotFoundError when there is no file; DamagedParquet when it cannot be read as
    written, or lacks one of the `required` columns.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(str(path))
    return table_from_bytes(path.read_bytes(), path, columns, required)


def table_from_bytes(data: bytes, where: object, columns: Sequence[str] | None = None,
                     required: Sequence[str] = ()) -> "pa.Table":
    """read_table of a file's bytes, read from wherever it is stored (`where` names it in
    messages): local files and objects are verified by the same code."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        expected = (table.schema.metadata or {}).get(DIGEST_KEY)
        intact = expected is None or digest(table) == expected
        names = table.column_names
    except MemoryError:
        raise
    except Exception as err:   # damage shows as many errors: OSError, ArrowInvalid, Unicode...
        raise _damaged(where, _reason(err, where)) from None
    if not intact:
        raise _damaged(where, "its content does not match its checksum")
    missing = [c for c in required if c not in names]
    if missing:
        raise _damaged(where, f"it has no {missing[0]!r} column")
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def read_parquet(path: str | Path, columns: Sequence[str] | None = None,
                 required: Sequence[str] = ()) -> "pd.DataFrame":
    """read_table as a pandas DataFrame."""
    return to_frame(read_table(path, columns, required), path)


def to_frame(table: "pa.Table", where: object) -> "pd.DataFrame":
    """A verified table as pandas; its pandas metadata may still be damaged in a file
    without a digest."""
    try:
        return table.to_pandas()
    except MemoryError:
        raise
    except Exception as err:   # the pandas metadata of a file without a digest, damaged
        raise _damaged(where, _reason(err, where)) from None


def _reason(err: Exception, where: object) -> str:
    text = " ".join(re.sub(r"Could not open Parquet input source '[^']*': ", "", str(err))
                    .split())
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _damaged(path: object, reason: str) -> DamagedParquet:
    return DamagedParquet(f"{path} is damaged ({reason})", reason)
