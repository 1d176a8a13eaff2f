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


def write_parquet_atomic(df: "pd.DataFrame", path: str | Path) -> None:
    """Write `df` to `path` so readers see the old file or the new one, never half of one,
    with page checksums and the content digest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           DIGEST_KEY: digest(table)})
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))


def read_table(path: str | Path, columns: Sequence[str] | None = None,
               required: Sequence[str] = ()) -> "pa.Table":
    """The file's table, verified (page checksums, digest); `columns` selects afterwards.

    FileNotFoundError when there is no file; DamagedParquet when it cannot be read as
    written, or lacks one of the `required` columns.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(str(path))
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        expected = (table.schema.metadata or {}).get(DIGEST_KEY)
        intact = expected is None or digest(table) == expected
        names = table.column_names
    except MemoryError:
        raise
    except Exception as err:   # damage shows as many errors: OSError, ArrowInvalid, Unicode...
        raise _damaged(path, _reason(err, path)) from None
    if not intact:
        raise _damaged(path, "its content does not match its checksum")
    missing = [c for c in required if c not in names]
    if missing:
        raise _damaged(path, f"it has no {missing[0]!r} column")
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def read_parquet(path: str | Path, columns: Sequence[str] | None = None,
                 required: Sequence[str] = ()) -> "pd.DataFrame":
    """read_table as a pandas DataFrame."""
    table = read_table(path, columns, required)
    try:
        return table.to_pandas()
    except MemoryError:
        raise
    except Exception as err:   # the pandas metadata of a file without a digest, damaged
        raise _damaged(Path(path), _reason(err, Path(path))) from None


def _reason(err: Exception, path: Path) -> str:
    text = " ".join(str(err).replace(f"Could not open Parquet input source '{path}': ", "")
                    .split())
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _damaged(path: Path, reason: str) -> DamagedParquet:
    return DamagedParquet(f"{path} is damaged ({reason})", reason)
