"""Where outputs live: a path (local, or a filesystem every node mounts) or a URI that ``pyarrow.fs`` resolves
(``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, ``file://``).

A *location* is such a string. Options of the filesystem ride in the URI as pyarrow reads them, for example
``s3://bucket/runs?region=eu-west-1&endpoint_override=minio:9000&scheme=http``; credentials come from the
usual environment (``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``, an instance role, ...).
:func:`join` keeps the options on every derived location, so ``join(root, "run", "metrics.json")`` is again a
complete URI. Ray Train and Tune receive the same filesystem (:func:`resolve`) for their checkpoints.

Writes of one object are atomic on both kinds: a path is written to a temporary name and renamed, and an
object store makes an object visible only when its upload completes. Readers therefore see a file whole or not
at all, which is what rayseg's "written last" markers (``summary.json``, label manifests) rely on.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (a one-letter scheme would be a Windows drive, so two letters at least)."""
    return bool(_URI.match(str(location)))


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path on it)``; a plain path becomes an absolute path on the local filesystem. A URI that
    pyarrow cannot open (unknown scheme, no support compiled in) raises ``ValueError`` naming it."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{location}: pyarrow cannot open this URI ({exc})") from None


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...``; on a URI the query string (filesystem options) stays at the end."""
    location = str(location)
    if not is_uri(location):
        return os.path.join(location, *parts)
    split = urlsplit(location)
    path = posixpath.join(split.path or "/", *parts)
    return urlunsplit((split.scheme, split.netloc, path, split.query, ""))


def basename(location: str | os.PathLike) -> str:
    location = str(location)
    path = urlsplit(location).path if is_uri(location) else location
    return posixpath.basename(path.rstrip("/")) or os.path.basename(os.path.normpath(path))


def parent(location: str | os.PathLike) -> str:
    location = str(location)
    if not is_uri(location):
        return os.path.dirname(os.path.abspath(location))
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc, posixpath.dirname(split.path.rstrip("/")), split.query, ""))


def absolute(location: str | os.PathLike) -> str:
    """A URI as given, a path made absolute (so that Ray workers started elsewhere find it)."""
    return str(location) if is_uri(location) else os.path.abspath(location)


def _info(location: str | os.PathLike) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def is_file(location: str | os.PathLike) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    """An object store has no folders: a prefix with at least one object under it counts as one."""
    if not is_uri(location):
        return os.path.isdir(location)
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        return True
    return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False)))


def exists(location: str | os.PathLike) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def list_dir(location: str | os.PathLike) -> list[str]:
    """Names of the entries directly under ``location``, sorted; ``[]`` when it does not exist."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(info.base_name for info in infos)


def read_bytes(location: str | os.PathLike) -> bytes:
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def readable(location: str | os.PathLike) -> str | io.BytesIO:
    """What to hand a reader that takes a path or a file object (``torch.load``, PIL): a path as it is, an
    object's bytes in memory."""
    return io.BytesIO(read_bytes(location)) if is_uri(location) else str(location)


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` atomically (temporary name + rename on a path, one upload on an object store); parent
    folders are created. Returns the number of bytes."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:  # no space, read-only, ...: no partial temporary file left; the error names the file
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        return len(data)
    fs, path = resolve(location)
    try:
        stream = fs.open_output_stream(path)
    except FileNotFoundError:  # filesystems with real folders (hdfs): create the parents, once
        fs.create_dir(posixpath.dirname(path), recursive=True)
        stream = fs.open_output_stream(path)
    with stream:
        stream.write(data)
    return len(data)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(location: str | os.PathLike, text: str) -> int:
    return write_bytes(location, text.encode("utf-8"))


def delete(location: str | os.PathLike) -> None:
    """Remove a file, or a folder (a prefix) and everything under it; nothing happens when neither is there."""
    if not is_uri(location):
        path = Path(location)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs, path = resolve(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.delete_file(path)
    elif kind == pafs.FileType.Directory or is_dir(location):
        fs.delete_dir(path)


def upload(local: str | os.PathLike, location: str | os.PathLike) -> None:
    """Copy a local file or folder (recursively) to ``location``, replacing files of the same names."""
    local = Path(local)
    if not is_uri(location) and Path(location).resolve() == local.resolve():
        return
    fs, path = resolve(location)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
    else:
        fs.create_dir(posixpath.dirname(path), recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download(location: str | os.PathLike, local: str | os.PathLike) -> bool:
    """Copy the file or folder at ``location`` to the local path ``local``; False when there is nothing there."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound and not is_dir(location):
        return False
    local = Path(local)
    if info.type == pafs.FileType.File:
        local.parent.mkdir(parents=True, exist_ok=True)
    else:
        local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return True


def file_sizes(location: str | os.PathLike) -> dict[str, int]:
    """Name -> size in bytes of the files directly under ``location`` (one listing, no request per file);
    ``{}`` when it does not exist."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return {info.base_name: int(info.size or 0) for info in infos if info.type == pafs.FileType.File}


def ray_storage(root: str | os.PathLike) -> dict:
    """Storage arguments for Ray Train/Tune's ``RunConfig`` (and ``Tuner.restore``): a path as it is, a URI as
    its pyarrow filesystem and the path on it (so options in the URI's query reach Ray too)."""
    if not is_uri(root):
        return {"storage_path": os.path.abspath(root)}
    filesystem, path = resolve(root)
    return {"storage_path": path, "storage_filesystem": filesystem}

