"""The results filesystem: where every layer reads, writes, lists and removes results.

A results root is a local path (`results`, `/mnt/nfs/r`, `file:///mnt/nfs/r`) or the URI of
a filesystem pyarrow opens (`s3://bucket/r`, `gs://bucket/r`, `hdfs://host/r`). Local
locations stay `pathlib.Path`s, so that local results behave exactly as they always did;
remote ones are `UriPath`s, pure paths spelled as their URI (no I/O of their own). Every
function here takes either: callers have one code path, and a new backend touches this
module only.

Atomic writes: a local file is written beside its target, flushed and renamed over it; an
object store's PUT replaces an object whole, so a remote write is one upload. Either way a
reader sees the old content or the new, never half of it.

Credentials and endpoints come from the environment the standard way (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL,
GOOGLE_APPLICATION_CREDENTIALS): pyarrow reads them; nothing here stores or prints them.
Plain Python with pyarrow imported lazily: no torch or ray.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from trainers.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.fs as pafs

# Environment variables that choose the S3/GCS endpoint and credentials: a filesystem opened
# under other values is another filesystem (tests switch credentials in one process).
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL",
                        "AWS_ENDPOINT_URL_S3", "GOOGLE_APPLICATION_CREDENTIALS")


class UriPath:
    """A location on a remote filesystem: `scheme://authority/key`, with the path operations
    the results layout uses (`/`, name, parent, with_name, parts). Never a local path."""

    def __init__(self, uri: str):
        scheme, sep, rest = uri.partition("://")
        if not sep or not scheme:
            raise ValueError(f"not a URI: {uri!r}")
        self.scheme = scheme.lower()
        authority, _, path = rest.partition("/")
        # the authority (bucket) is kept even when empty: s3:///r names no bucket
        self.key = "/".join([authority, *(p for p in path.split("/") if p and p != ".")])

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"UriPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UriPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str) -> "UriPath":
        return UriPath(f"{self}/{part}")

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self.scheme}://", *self.key.split("/"))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "UriPath":
        head = self.key.rsplit("/", 1)[0] if "/" in self.key else self.key
        return UriPath(f"{self.scheme}://{head}")

    @property
    def parents(self) -> list["UriPath"]:
        out, at = [], self
        while "/" in at.key:
            at = at.parent
            out.append(at)
        return out

    def with_name(self, name: str) -> "UriPath":
        return self.parent / name

    def absolute(self) -> "UriPath":
        return self

    def resolve(self) -> "UriPath":
        return self

    def as_posix(self) -> str:
        return str(self)

    @property
    def bucket(self) -> str:
        """The authority: an S3/GCS bucket, an HDFS host."""
        return self.key.split("/", 1)[0]


Location = Union[Path, UriPath]


def is_uri(text: str) -> bool:
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


def location(value: "str | os.PathLike[str] | UriPath") -> Location:
    """A location from its spelling: a UriPath for a remote URI, else a Path (`file://` is
    a local path)."""
    if isinstance(value, (Path, UriPath)):
        return value
    text = os.fspath(value)
    if text.lower().startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(text).path))
    return UriPath(text) if is_uri(text) else Path(text)


def results_root(text: "str | os.PathLike[str] | UriPath") -> Location:
    """`--results` as given: a URI as it is, a local path made absolute (`~` expanded)."""
    root = location(text)
    return root if isinstance(root, UriPath) else root.expanduser().resolve()


def is_remote(loc: Location) -> bool:
    """Whether `loc` is on storage reached over the network (every Ray node reaches it)."""
    return isinstance(loc, UriPath)


# ------------------------------------------------------------------ remote filesystems
_filesystems: dict[tuple, "pafs.FileSystem"] = {}


def _filesystem(loc: UriPath) -> "pafs.FileSystem":
    """The pyarrow filesystem of a URI's scheme and authority, opened once per process and
    set of credential variables."""
    import pyarrow.fs as pafs

    key = (loc.scheme, loc.bucket, *(os.environ.get(v) for v in CREDENTIAL_VARIABLES))
    if key not in _filesystems:
        # S3: a delayed open makes a small object's write one PUT (not a multipart upload's
        # three requests); errors then show when the stream closes, which every write does
        options = "?allow_delayed_open=true" if loc.scheme == "s3" else ""
        fs, _ = pafs.FileSystem.from_uri(f"{loc.scheme}://{loc.bucket}{options}")
        _filesystems[key] = fs
    return _filesystems[key]


def _remote(loc: UriPath) -> tuple["pafs.FileSystem", str]:
    return _filesystem(loc), loc.key


def check_root(root: Location) -> None:
    """Refuse, in one line and before anything is written or Ray starts, a results root
    whose filesystem cannot be opened, whose bucket does not exist, or whose credentials
    are refused. Reads only; a local root needs no check (it is created when written)."""
    if not isinstance(root, UriPath):
        return
    import pyarrow.fs as pafs

    if not root.bucket:
        raise UserError(f"--results {str(root)!r} names no bucket: write it as "
                        f"{root.scheme}://BUCKET/FOLDER")
    try:
        fs = _filesystem(root)
    except Exception as err:   # ArrowInvalid/ArrowNotImplementedError/OSError by scheme
        import pyarrow as pa

        if isinstance(err, (pa.ArrowInvalid, pa.ArrowNotImplementedError)):
            raise UserError(f"--results {str(root)!r}: no filesystem opens it "
                            f"({_short(err)}): give a local folder or an s3://, gs:// or "
                            "hdfs:// URI") from None
        raise UserError(f"--results {str(root)!r}: {_access_problem(err, root)}"
                        f"{_endpoint_note(root)}") from None   # S3 resolving the region
    try:
        bucket = fs.get_file_info(root.bucket)
        if bucket.type == pafs.FileType.NotFound:
            raise UserError(f"--results {str(root)!r}: the bucket {root.bucket!r} does not "
                            f"exist{_endpoint_note(root)}: create it, or name an existing one")
        fs.get_file_info(pafs.FileSelector(root.key, allow_not_found=True, recursive=False))
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"--results {str(root)!r}: {_access_problem(err, root)}"
                        f"{_endpoint_note(root)}") from None


def _short(err: Exception) -> str:
    text = " ".join(str(err).split())
    return (text[:160] + "...") if len(text) > 160 else text or type(err).__name__


def _access_problem(err: Exception, root: UriPath) -> str:
    text = str(err)
    if "NoSuchBucket" in text or "NOT_FOUND" in text:
        return (f"the bucket {root.bucket!r} does not exist: create it, or name an existing "
                "one")
    if any(word in text for word in ("ACCESS_DENIED", "AccessDenied", "Forbidden", "403",
                                     "InvalidAccessKeyId", "SignatureDoesNotMatch")):
        return ("the storage refused these credentials (access denied): set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (S3) or "
                "GOOGLE_APPLICATION_CREDENTIALS (GCS) to ones allowed to read and write it")
    return f"cannot reach it ({_short(err)}): check the endpoint and the network"


def _endpoint_note(root: UriPath) -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") if root.scheme == "s3" else None
    return f" (endpoint {endpoint})" if endpoint else ""


# ------------------------------------------------------------------ reading
def read_bytes(loc: Location) -> bytes:
    """The file's bytes; FileNotFoundError when there is none."""
    if isinstance(loc, UriPath):
        fs, key = _remote(loc)
        try:
            with fs.open_input_stream(key) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(str(loc)) from None
    return Path(loc).read_bytes()


def read_text(loc: Location) -> str:
    return read_bytes(loc).decode("utf-8")


def _type(loc: UriPath):
    fs, key = _remote(loc)
    return fs.get_file_info(key).type


def exists(loc: Location) -> bool:
    if isinstance(loc, UriPath):
        import pyarrow.fs as pafs

        return _type(loc) != pafs.FileType.NotFound
    return loc.exists()


def is_file(loc: Location) -> bool:
    if isinstance(loc, UriPath):
        import pyarrow.fs as pafs

        return _type(loc) == pafs.FileType.File
    return loc.is_file()


def is_dir(loc: Location) -> bool:
    """A folder (on an object store: a prefix that holds something)."""
    if isinstance(loc, UriPath):
        import pyarrow.fs as pafs

        return _type(loc) == pafs.FileType.Directory
    return loc.is_dir()


def children(folder: Location) -> list[tuple[str, bool]]:
    """(name, is a folder) of what `folder` holds directly, sorted by name; [] when there
    is no such folder."""
    if isinstance(folder, UriPath):
        import pyarrow.fs as pafs

        fs, key = _remote(folder)
        infos = fs.get_file_info(pafs.FileSelector(key, allow_not_found=True, recursive=False))
        return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)
    if not folder.is_dir():
        return []
    return sorted((p.name, p.is_dir()) for p in folder.iterdir())


def names(folder: Location) -> list[str]:
    """The names of what `folder` holds directly, sorted."""
    return [name for name, _ in children(folder)]


# ------------------------------------------------------------------ writing
def write_bytes(loc: Location, data: bytes) -> None:
    """`data` to `loc` atomically (a local file flushed to disk before it replaces the old
    one; an object in one PUT)."""
    if isinstance(loc, UriPath):
        fs, key = _remote(loc)
        with fs.open_output_stream(key) as f:
            f.write(data)
        return
    from trainers.atomic import write_bytes_durably

    write_bytes_durably(loc, data)


def write_text(loc: Location, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def write_with(loc: Location, write: Callable[[str], None]) -> None:
    """Call write(local temporary path) (a library that writes only to files, such as
    matplotlib's savefig) and put the result at `loc` atomically."""
    from trainers.atomic import replace_atomically

    if not isinstance(loc, UriPath):
        replace_atomically(loc, write)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onorm-upload-") as tmp:
        path = Path(tmp) / loc.name
        write(str(path))
        write_bytes(loc, path.read_bytes())


def remove(loc: Location) -> None:
    """Delete a file or object; nothing when it is not there."""
    if isinstance(loc, UriPath):
        fs, key = _remote(loc)
        try:
            fs.delete_file(key)
        except FileNotFoundError:
            pass
        return
    Path(loc).unlink(missing_ok=True)


def move_aside(loc: Location) -> Location:
    """Rename a damaged file to `<name>.damaged-<time>` beside it (never over an earlier
    one) and return the new location: what was damaged is kept for inspection."""
    if not isinstance(loc, UriPath):
        from trainers.atomic import move_aside as move_file_aside

        return move_file_aside(loc)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = loc.with_name(f"{loc.name}.damaged-{stamp}"), 1
    while exists(target):
        n += 1
        target = loc.with_name(f"{loc.name}.damaged-{stamp}-{n}")
    fs, key = _remote(loc)
    fs.move(key, target.key)   # an object store copies, then deletes
    return target


# ------------------------------------------------------------------ whole folders
def download_tree(remote: Location, local: Path) -> None:
    """Copy every file under `remote` into the local folder `local` (for tools that only
    write local files: the trackers)."""
    if not isinstance(remote, UriPath) or not is_dir(remote):
        return
    import pyarrow.fs as pafs

    fs, key = _remote(remote)
    for info in fs.get_file_info(pafs.FileSelector(key, recursive=True)):
        if info.type == pafs.FileType.File:
            target = local / info.path[len(key):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as f:
                target.write_bytes(f.read())


def upload_tree(local: Path, remote: Location, changed_since: float = 0.0) -> int:
    """Copy the files under the local folder `local` that changed at or after
    `changed_since` to `remote`; returns how many."""
    if not isinstance(remote, UriPath) or not local.is_dir():
        return 0
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file() and path.stat().st_mtime >= changed_since:
            write_bytes(remote / path.relative_to(local).as_posix(), path.read_bytes())
            count += 1
    return count


# ------------------------------------------------------------------ Parquet
def read_table(loc: Location, columns=None, required=()) -> "pa.Table":
    """A Parquet file verified (trainers/parquet_io.py); FileNotFoundError, DamagedParquet."""
    from trainers.parquet_io import table_from_bytes

    return table_from_bytes(read_bytes(loc), loc, columns, required)


def read_parquet(loc: Location, columns=None, required=()) -> "pd.DataFrame":
    from trainers.parquet_io import to_frame

    return to_frame(read_table(loc, columns, required), loc)


def write_parquet(loc: Location, df: "pd.DataFrame") -> None:
    from trainers.parquet_io import parquet_bytes, write_parquet_atomic

    if isinstance(loc, UriPath):
        write_bytes(loc, parquet_bytes(df))
    else:
        write_parquet_atomic(df, loc)

