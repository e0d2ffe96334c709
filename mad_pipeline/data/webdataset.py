"""webdataset tar shards (what img2dataset and clip-retrieval write): ``--dataset webdataset --data-root SHARDS``.

``SHARDS`` is a brace pattern (``shards/{00000..00127}.tar``, expanded as webdataset and img2dataset do), a glob
(``'shards/*.tar'``), one shard, or a folder (its ``*.tar`` files). Members are grouped into samples by webdataset's
``__key__`` (the member name up to the first dot of its base name; the rest is the extension). Per sample:

* the image is the first of its ``jpg``, ``jpeg``, ``png``, ``webp`` members;
* the caption is its ``txt`` member (UTF-8, trailing newlines dropped), else the ``caption`` or ``text`` field of
  its ``json`` member (a string or a list of captions); the json's other fields go to ``Sample.meta``;
* the sample id is the key, which must be unique over all shards.

Only the tar headers are read here (and the small txt / json members): each image member's data offset and size
are recorded, so a decode worker later reads one image with one ``pread`` (:class:`~.sources.TarMembers`).
Compressed shards (``.tar.gz``) cannot be read at random and are refused.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import InputError
from .base import Dataset, Sample, Skipped
from .jsonio import check_texts
from .sources import TarMembers

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4")


def expand_shards(spec: str | Path) -> list[str]:
    """The shard paths of ``--data-root`` in order: brace expansion, then globs, or a folder's ``*.tar``."""
    from braceexpand import braceexpand

    spec = str(spec)
    if Path(spec).is_dir():
        shards = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not shards:
            raise InputError(f"--data-root {spec}: no .tar shards in this folder")
        return shards
    shards: list[str] = []
    for part in braceexpand(spec):
        if glob.has_magic(part):
            found = sorted(glob.glob(part))
            if not found:
                raise InputError(f"--data-root {spec}: no shard matches {part}")
            shards += found
        else:
            shards.append(part)
    for s in shards:
        if s.endswith(_COMPRESSED):
            raise InputError(f"{s}: compressed shards cannot be read at random; decompress them "
                             f"(e.g. gunzip) and point --data-root at the .tar files")
    return list(dict.fromkeys(shards))


_ZERO_BLOCK = bytes(512)
_SPECIAL = (b"x", b"g", b"L", b"K")  # pax and GNU long-name headers: left to the tarfile module


class _Shard:
    """One shard's samples, grouped by key: {key: {ext: (member name, offset, size)}} in member order.

    Plain ustar headers (what img2dataset, webdataset's TarWriter and GNU tar write for short names) are parsed
    here, a few microseconds a member; a shard with pax or GNU long-name headers or base-256 sizes is read with
    the tarfile module instead (same result, slower)."""

    def __init__(self, path: str):
        self.path = path
        self.samples: dict[str, dict[str, tuple[str, int, int]]] = {}
        self.small: dict[tuple[str, str], bytes] = {}  # (key, ext) -> bytes of txt / json members

    def scan(self) -> None:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if self._scan_ustar(f, size):
                return
        self.samples.clear()
        self.small.clear()
        with tarfile.open(self.path, mode="r:") as tf:
            while (m := tf.next()) is not None:
                if m.isfile():
                    self._member(m.name, m.offset_data, m.size, tf.fileobj)

    def _scan_ustar(self, f, file_size: int) -> bool:
        offset = 0
        while True:
            f.seek(offset)
            buf = f.read(512)
            if not buf or buf == _ZERO_BLOCK:
                return True  # end of archive
            if len(buf) < 512:
                raise tarfile.ReadError(f"truncated header at byte {offset}")
            kind = buf[156:157]
            if kind in _SPECIAL or buf[124] & 0x80:
                return False
            try:
                chksum = int(buf[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
                size = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                raise tarfile.ReadError(f"bad header at byte {offset}") from None
            if chksum != sum(buf[:148]) + 256 + sum(buf[156:]):
                raise tarfile.ReadError(f"bad header checksum at byte {offset}")
            name = buf[:100].split(b"\0", 1)[0]
            if buf[257:262] == b"ustar" and buf[345] != 0:
                name = buf[345:500].split(b"\0", 1)[0] + b"/" + name
            data = offset + 512
            if kind in (b"0", b"\0", b"7"):  # regular files
                if data + size > file_size:
                    raise tarfile.ReadError(f"the file ends inside member {name.decode(errors='replace')}")
                self._member(name.decode("utf-8", "surrogateescape"), data, size, f)
            offset = data + (size + 511) // 512 * 512

    def _member(self, name: str, offset: int, size: int, f) -> None:
        match = _KEY.match(name)
        if match is None or name.rsplit("/", 1)[-1].startswith("."):
            return
        key, ext = match.group(1), match.group(2).lower()
        members = self.samples.setdefault(key, {})
        if ext in members:
            return
        members[ext] = (name, offset, size)
        if ext in ("txt", "json"):
            f.seek(offset)
            self.small[(key, ext)] = f.read(size)


def _caption(shard: _Shard, key: str, members: dict) -> tuple[list[str], dict]:
    meta: dict = {}
    texts: list[str] | None = None
    if "json" in members:
        raw = shard.small[(key, "json")]
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise _Bad(members["json"][0], f"malformed JSON ({e})") from None
        if isinstance(rec, dict):
            for field in ("caption", "text"):
                if rec.get(field) is not None:
                    try:
                        texts = check_texts(rec[field], field)
                    except ValueError as e:
                        raise _Bad(members["json"][0], str(e)) from None
                    break
            meta = {k: v for k, v in rec.items() if k not in ("caption", "text")}
    if "txt" in members:
        try:
            texts = check_texts(shard.small[(key, "txt")].decode("utf-8").rstrip("\r\n"), "txt")
        except UnicodeDecodeError as e:
            raise _Bad(members["txt"][0], f"not valid UTF-8 (byte {e.start})") from None
        except ValueError as e:
            raise _Bad(members["txt"][0], str(e)) from None
    return texts or [], meta


class _Bad(Exception):
    def __init__(self, member: str, reason: str):
        super().__init__(reason)
        self.member, self.reason = member, reason


def _scan_all(shards: list[str]):
    """Each shard scanned (several at once: reads overlap on network storage), in order: (shard, error or None)."""

    def one(path: str):
        shard = _Shard(path)
        try:
            shard.scan()
        except (OSError, tarfile.TarError, EOFError) as e:
            return shard, e
        return shard, None

    with ThreadPoolExecutor(min(8, len(shards))) as pool:
        yield from pool.map(one, shards)


def read_webdataset(spec: str | Path, on_error: str = "fail") -> Dataset:
    """Index the shards of ``spec`` into a Dataset whose images are tar members. A missing or unreadable shard and
    a bad sample (undecodable txt / json, duplicate key, nothing usable) fail naming ``shard`` or ``shard:member``,
    or with ``on_error="skip"`` are recorded and left out."""
    shards = expand_shards(spec)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    index: dict[str, tuple[int, int, int]] = {}
    first_seen: dict[str, str] = {}
    for i, (path, (shard, e)) in enumerate(zip(shards, _scan_all(shards), strict=True)):
        if e is not None:
            reason = "shard not found" if isinstance(e, FileNotFoundError) else f"not a readable tar file ({e})"
            if on_error != "skip":
                raise InputError(f"{path}: {reason}") from None
            skipped.append(Skipped(path, None, reason))  # members indexed before the damage are kept
        for key, members in shard.samples.items():
            try:
                sample, member = _sample(shard, key, members, first_seen)
            except _Bad as bad:
                where = f"{path}:{bad.member}"
                if on_error != "skip":
                    raise InputError(f"{where}: {bad.reason}") from None
                skipped.append(Skipped(where, key, bad.reason))
                continue
            if member is not None:
                index[sample.image] = (i, member[1], member[2])
            first_seen[key] = path
            samples.append(sample)
    if not samples and not skipped:
        raise InputError(f"--data-root {spec}: no samples in {len(shards)} shard(s)")
    parents = {str(Path(s).resolve().parent) for s in shards}
    root = Path(parents.pop()) if len(parents) == 1 else Path(spec).parent
    return Dataset(name="webdataset", root=root, split=None, samples=samples, skipped=skipped,
                   sources=[Path(s) for s in shards], images=TarMembers(shards, index))


def _sample(shard: _Shard, key: str, members: dict, first_seen: dict[str, str]
            ) -> tuple[Sample, tuple[str, int, int] | None]:
    ext = next((x for x in IMAGE_EXTS if x in members), None)
    any_member = members[ext][0] if ext else next(iter(members.values()))[0]
    if key in first_seen:
        raise _Bad(any_member, f"duplicate sample key {key!r} (also in {first_seen[key]})")
    texts, meta = _caption(shard, key, members)
    if ext is None and not texts:
        raise _Bad(any_member, f"sample {key!r} has neither an image ({', '.join(IMAGE_EXTS)}) nor a caption")
    image = f"{shard.path}:{members[ext][0]}" if ext else None
    return Sample(id=key, image=image, texts=tuple(texts), meta=meta), (members[ext] if ext else None)


__all__ = ["IMAGE_EXTS", "expand_shards", "read_webdataset"]
