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
import re
import tarfile
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


class _Shard:
    """One shard's samples, grouped by key: {key: {ext: (member name, offset, size)}} in member order."""

    def __init__(self, path: str):
        self.path = path
        self.samples: dict[str, dict[str, tuple[str, int, int]]] = {}
        self.small: dict[tuple[str, str], bytes] = {}  # (key, ext) -> bytes of txt / json members

    def scan(self) -> None:
        with tarfile.open(self.path, mode="r:") as tf:
            while True:
                m = tf.next()
                if m is None:
                    break
                if not m.isfile():
                    continue
                match = _KEY.match(m.name)
                if match is None or Path(m.name).name.startswith("."):
                    continue
                key, ext = match.group(1), match.group(2).lower()
                self.samples.setdefault(key, {}).setdefault(ext, (m.name, m.offset_data, m.size))
                if ext in ("txt", "json") and (key, ext) not in self.small:
                    f = tf.extractfile(m)
                    self.small[(key, ext)] = f.read() if f is not None else b""


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


def read_webdataset(spec: str | Path, on_error: str = "fail") -> Dataset:
    """Index the shards of ``spec`` into a Dataset whose images are tar members. A missing or unreadable shard and
    a bad sample (undecodable txt / json, duplicate key, nothing usable) fail naming ``shard`` or ``shard:member``,
    or with ``on_error="skip"`` are recorded and left out."""
    shards = expand_shards(spec)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    index: dict[str, tuple[int, int, int]] = {}
    first_seen: dict[str, str] = {}
    for i, path in enumerate(shards):
        shard = _Shard(path)
        try:
            shard.scan()
        except (OSError, tarfile.TarError, EOFError) as e:
            reason = "shard not found" if isinstance(e, FileNotFoundError) else f"not a readable tar file ({e})"
            if on_error != "skip":
                raise InputError(f"{path}: {reason}") from None
            skipped.append(Skipped(path, None, reason))  # members indexed before the damage are kept
        for key, members in shard.samples.items():
            try:
                sample, member = _sample(shard, key, members, first_seen)
            except _Bad as e:
                where = f"{path}:{e.member}"
                if on_error != "skip":
                    raise InputError(f"{where}: {e.reason}") from None
                skipped.append(Skipped(where, key, e.reason))
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
