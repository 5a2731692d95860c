"""Where an audit's pictures come from: a folder, a ``.zip``, or a list — read safely.

Nothing is ever extracted to disk: zip entries are read into memory one at a time, after their
path, kind and declared size were checked, so an archive cannot write outside anything, and a
*zip bomb* is refused before it is inflated. Every picture becomes an :class:`Item` that says how to
read its bytes (a small picklable reference, so that Ray workers can read it themselves), the
label its folder gives, and, for an entry refused for safety, why.
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
import zipfile
from dataclasses import dataclass
from typing import Iterable, Sequence

from PIL import Image

from .errors import ExplainError

#: Limits for ``.zip`` sources (override with ``explain.audit(..., limits=ZipLimits(...))``).
MAX_ZIP_ENTRIES = 200_000
MAX_ZIP_TOTAL_BYTES = 4 * 2**30  # declared uncompressed size of all entries together
MAX_ENTRY_BYTES = 64 * 2**20  # one picture
MAX_RATIO = 200.0  # uncompressed / compressed of one entry; real pictures compress little

_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".jar")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\x28\xb5\x2f\xfd")


class AuditError(ExplainError):
    """A problem with a whole audit run (its source, options or boxes file), said in words."""


@dataclass(frozen=True)
class ZipLimits:
    """How much a ``.zip`` source may hold before it is refused as a possible zip bomb."""

    max_entries: int = MAX_ZIP_ENTRIES
    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES
    max_entry_bytes: int = MAX_ENTRY_BYTES
    max_ratio: float = MAX_RATIO


@dataclass(frozen=True)
class Item:
    """One picture of an audit: its name in the table, how to read it, its folder label.

    ``ref`` is ``("file", path)``, ``("zip", archive, entry)``, ``("zipmem", archive bytes, entry)``,
    ``("bytes", data)`` or
    ``("image", PIL image)``; ``error`` is set when the entry was refused before reading.
    """

    file: str
    ref: tuple
    label: str | int | None = None
    error: str = ""


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def collect(source: object, limits: ZipLimits | None = None) -> list[Item]:
    """The pictures of ``source``: a folder (recursive), a ``.zip`` file, one file, or a list.

    A list holds paths, ``(name, bytes)``, ``(name, bytes, label)``, ``(name, PIL image[, label])``
    or :class:`Item`\\ s. In a folder or zip, a picture in a sub-folder gets that (first)
    sub-folder's name as its label: the ImageFolder layout. Raises :class:`AuditError` for a
    missing or empty source and for an archive beyond ``limits``.
    """
    limits = limits or ZipLimits()
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if path.is_symlink():
            raise AuditError(f"{path} is a symbolic link; give the folder or file it points to.")
        if path.is_dir():
            items = _folder(path)
            where = f"the folder {path}"
        elif path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
            items = _zip(path, limits)
            where = f"the archive {path.name}"
        elif path.is_file():
            items = [Item(path.name, ("file", str(path)))]
            where = str(path)
        else:
            raise AuditError(f"{path} does not exist; give a folder of pictures, a .zip or a list of files.")
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        items = _listed(source, limits)
        where = "the list"
    else:
        raise AuditError(
            f"An audit needs a folder, a .zip file or a list of files, not {type(source).__name__}."
        )
    if not items:
        raise AuditError(f"There are no pictures in {where}; add some (sub-folders are searched too).")
    return items


def _listed(entries: Sequence, limits: ZipLimits) -> list[Item]:
    items: list[Item] = []
    for entry in entries:
        if isinstance(entry, Item):
            items.append(entry)
        elif isinstance(entry, (str, os.PathLike)):
            p = pathlib.Path(entry)
            if p.is_symlink():
                items.append(Item(str(p), ("file", str(p)), error="is a symbolic link; skipped for safety."))
            else:
                items.append(Item(str(p), ("file", str(p))))
        elif isinstance(entry, tuple) and len(entry) in (2, 3):
            name, data = entry[0], entry[1]
            label = entry[2] if len(entry) == 3 else None
            if isinstance(data, Image.Image):
                items.append(Item(str(name), ("image", data), label))
            elif isinstance(data, (bytes, bytearray, memoryview)) and str(name).lower().endswith(".zip") \
                    and bytes(data[:4]) == b"PK\x03\x04":
                items.extend(_zip(bytes(data), limits, label=str(name)))  # an uploaded archive, read in memory
            elif isinstance(data, (bytes, bytearray, memoryview)):
                items.append(Item(str(name), ("bytes", bytes(data)), label))
            else:
                raise AuditError(f"List entry {name!r}: give bytes or a PIL image, not {type(data).__name__}.")
        else:
            raise AuditError(
                f"List entries are paths, (name, bytes[, label]) or (name, image[, label]), not {type(entry).__name__}."
            )
    return items


def _folder(root: pathlib.Path) -> list[Item]:
    items: list[Item] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = pathlib.Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in list(dirnames):
            if (here / d).is_symlink():  # os.walk lists linked folders without entering them
                rel = (here / d).relative_to(root).as_posix()
                items.append(Item(rel, ("file", str(here / d)), error="is a symbolic link to a folder; skipped for safety."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # .DS_Store and friends
            p = here / name
            rel = p.relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            if p.is_symlink():
                items.append(Item(rel.as_posix(), ("file", str(p)), label, "is a symbolic link; skipped for safety."))
            elif name.lower().endswith(_ARCHIVE_SUFFIXES):
                items.append(Item(rel.as_posix(), ("file", str(p)), label, "is an archive; unpack it or audit it on its own."))
            else:
                items.append(Item(rel.as_posix(), ("file", str(p)), label))
    return items


def _zip(path: pathlib.Path | bytes, limits: ZipLimits, label: str = "") -> list[Item]:
    """The entries of an archive on disk (``path``) or in memory (``bytes``, shown as ``label``)."""
    in_memory = isinstance(path, bytes)
    shown = label or ("the archive" if in_memory else path.name)  # type: ignore[union-attr]
    try:
        with zipfile.ZipFile(io.BytesIO(path) if in_memory else path) as zf:  # type: ignore[arg-type]
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise AuditError(f"{shown} is not a readable zip archive ({exc}); re-create it and try again.") from None
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_entries:
        raise AuditError(
            f"{shown} holds {len(files):,} entries, more than the limit of {limits.max_entries:,}; split it up."
        )
    total = sum(i.file_size for i in files)
    if total > limits.max_total_bytes:
        raise AuditError(
            f"{shown} declares {_human(total)} uncompressed, beyond the limit of "
            f"{_human(limits.max_total_bytes)}: refused as a possible zip bomb. Split it or audit a folder."
        )
    names = [i.filename.replace("\\", "/") for i in files]
    reasons = [_unsafe_entry(info, name, limits) for info, name in zip(files, names)]
    # One folder around everything (``set.zip`` → ``set/3/a.png``) is not a label.
    parts = [n.split("/") for n in names]
    safe = [p for p, r in zip(parts, reasons) if not r]
    strip = 0
    if safe and all(len(p) >= 3 for p in safe) and len({p[0] for p in safe}) == 1:
        strip = 1
    items: list[Item] = []
    for info, name, p, reason in zip(files, names, parts, reasons):
        rel = "/".join(p[strip:])
        label = p[strip] if len(p) - strip > 1 else None
        ref = ("zipmem", path, info.filename) if in_memory else ("zip", str(path), info.filename)
        if reason:
            items.append(Item(name, ref, None, reason))
        elif p[-1].startswith(".") or name.startswith("__MACOSX/"):
            continue
        else:
            items.append(Item(rel, ref, label))
    return items


def _unsafe_entry(info: zipfile.ZipInfo, name: str, limits: ZipLimits) -> str:
    """Why a zip entry is refused before reading ('' when it may be read)."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/"):
        return "has an unsafe path (absolute or with '..') in the archive; skipped, nothing was written."
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link inside the archive; skipped for safety."
    if name.lower().endswith(_ARCHIVE_SUFFIXES):
        return "is an archive inside the archive; unpack it first (nested archives are not opened)."
    if info.file_size > limits.max_entry_bytes:
        return (f"declares {_human(info.file_size)} uncompressed, beyond the limit of "
                f"{_human(limits.max_entry_bytes)} for one picture; skipped.")
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        return (f"compresses {info.file_size / info.compress_size:.0f}:1, beyond the limit of "
                f"{limits.max_ratio:.0f}:1 (a possible zip bomb); skipped.")
    return ""


class Reader:
    """Reads :class:`Item` bytes, keeping archives open for the length of a run."""

    def __init__(self, limits: ZipLimits | None = None) -> None:
        self.limits = limits or ZipLimits()
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, item: Item) -> bytes | Image.Image:
        """The picture's bytes (or PIL image); raises ``OSError``/:class:`AuditError` when unreadable."""
        kind = item.ref[0]
        if kind == "file":
            return pathlib.Path(item.ref[1]).read_bytes()
        if kind == "bytes":
            return item.ref[1]
        if kind == "image":
            return item.ref[1]
        if kind in ("zip", "zipmem"):
            archive, entry = item.ref[1], item.ref[2]
            key = archive if kind == "zip" else f"mem:{id(archive)}"
            zf = self._zips.get(key)
            if zf is None:
                zf = self._zips[key] = zipfile.ZipFile(archive if kind == "zip" else io.BytesIO(archive))
            with zf.open(entry) as f:
                # Never trust the declared size alone: stop inflating past the limit.
                data = f.read(self.limits.max_entry_bytes + 1)
            if len(data) > self.limits.max_entry_bytes:
                raise AuditError(f"inflates beyond {_human(self.limits.max_entry_bytes)} (a possible zip bomb); skipped.")
            if looks_like_archive(data):
                raise AuditError("is an archive inside the archive; unpack it first (nested archives are not opened).")
            return data
        raise AuditError(f"unknown picture reference {kind!r}")  # pragma: no cover

    def close(self) -> None:
        for zf in self._zips.values():
            zf.close()
        self._zips.clear()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def looks_like_archive(data: bytes) -> bool:
    """True for bytes that start like a zip, gzip, bzip2, xz, 7z, rar or zstd archive."""
    return bytes(data[:8]).startswith(_ARCHIVE_MAGIC)


def file_names(items: Iterable[Item]) -> list[str]:
    """The table names of ``items`` (for matching a boxes file)."""
    return [i.file for i in items]


__all__ = ["AuditError", "Item", "Reader", "ZipLimits", "collect", "looks_like_archive"]
