"""VCR v1.0 reader for the official release files (https://visualcommonsense.com/download/).

Official layout (data root = the ``vcr1/`` folder)::

    train.jsonl  val.jsonl  test.jsonl          (``vcr1annots.zip``; may also sit in ``vcr1annots/``)
    vcr1images/<movie>/<frame>.jpg, <frame>.json (``vcr1images.zip``: image and metadata files)

Each line holds ``question``, ``answer_choices`` (4), ``rationale_choices`` (4), ``answer_label``,
``rationale_label`` (0-3; removed in ``test.jsonl``), ``objects`` (detected class names), ``img_fn`` and
``metadata_fn`` (relative to ``vcr1images/``), ``annot_id`` and more. Texts are token lists mixing words and lists of
object indices: ``["What", "are", [0, 1], "doing", "?"]``.

Object references are rendered as text as ``{objects[i]}{i}`` (0-based index, as in the file and its metadata
boxes): ``[0, 1]`` with objects ``["person", "person"]`` -> ``"person0 and person1"``; three or more ->
``"person0, person1 and dog2"``. Tokens are joined with spaces, except that punctuation (``. , ? ! ; :``) and
clitics (``'s``, ``n't``...) attach to the previous token.

Each sample is one question: ``id`` = annot_id, ``image`` = ``vcr1images/{img_fn}``, ``texts`` = (question,
answer 0-3, rationale 0-3) rendered, ``meta`` = annot_id, question, answer_choices, rationale_choices (rendered),
answer_label, rationale_label (None when absent), objects, img_fn, metadata_fn (relative to the data root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Dataset, Sample, Skipped
from .jsonio import check_int, check_text, not_unicode, peek_field, read_jsonl, require
from .paths import safe_relpath, split_file
from .registry import register_reader

SPLITS = ("train", "val", "test")
NUM_CHOICES = 4
IMAGE_DIR = "vcr1images"
_FILE_DIRS = ("", "vcr1annots")
_ATTACH = {".", ",", "?", "!", ";", ":", "...", ")"}


def render_objects(indices: list[int], objects: list[str]) -> str:
    names = [f"{objects[i]}{i}" for i in indices]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def render_tokens(tokens: Any, objects: list[str], field: str = "tokens") -> str:
    """Render a VCR token list (words and lists of object indices) as one string; ValueError if malformed."""
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"field {field!r} must be a non-empty list of tokens")
    out: list[str] = []
    started = False  # a non-empty piece written (the next one is spaced unless it attaches)
    for k, tok in enumerate(tokens):
        if isinstance(tok, str):
            if not_unicode(tok):  # the message (and its field name) only for a bad token
                check_text(tok, f"{field}[{k}]")
            piece = tok
        elif isinstance(tok, list) and tok:
            for i in tok:
                if not isinstance(i, int) or isinstance(i, bool):
                    raise ValueError(f"{field}[{k}]: object references must be integers")
                if not 0 <= i < len(objects):
                    raise ValueError(f"{field}[{k}]: object index {i} out of range (the record has "
                                     f"{len(objects)} objects)")
            piece = render_objects(tok, objects)
        else:
            raise ValueError(f"{field}[{k}] must be a word or a non-empty list of object indices")
        if started and not _attaches(piece):
            out.append(" ")
        out.append(piece)
        started = started or bool(piece)
    return "".join(out)


def _attaches(piece: str) -> bool:
    return piece in _ATTACH or piece[:1] == "'" or (len(piece) == 3 and piece.lower() == "n't")


def vcr_file(root: Path, split: str) -> Path:
    """The split's file; a split not in :data:`SPLITS` (the shapes world's ``shift``) only when its file exists."""
    return split_file(root, split, pattern="{split}.jsonl", splits=SPLITS, dirs=_FILE_DIRS, dataset="VCR",
                      what="VCR annotation")


@register_reader("vcr")
def read_vcr(root: Path, split: str, on_error: str = "fail") -> Dataset:
    root = Path(root)
    path = vcr_file(root, split)
    samples, skipped = parse_vcr(path, root=root, require_labels=split != "test", on_error=on_error)
    return Dataset(name="vcr", root=root, split=split, samples=samples, skipped=skipped, sources=[path])


def parse_vcr(path: Path, *, root: Path | None = None, require_labels: bool = True,
              on_error: str = "fail") -> tuple[list[Sample], list[Skipped]]:
    """Parse one VCR jsonl file. With ``root`` samples get image paths; without (scoring) they don't.
    ``require_labels``: a record without ``answer_label``/``rationale_label`` is an error (not in test).
    Problems name ``file:line``."""
    return read_jsonl(path, lambda rec, seen: _parse_record(rec, root, require_labels, seen), on_error=on_error,
                      what="VCR annotation file", sample_id=lambda line: peek_field(line, "annot_id"))


def _parse_record(rec: Any, root: Path | None, require_labels: bool, seen: set[str]) -> Sample:
    if not isinstance(rec, dict):
        raise ValueError("expected a JSON object")
    annot_id = check_text(require(rec, "annot_id"), "annot_id")
    objects = require(rec, "objects")
    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
        raise ValueError("field 'objects' must be a list of strings")
    question = render_tokens(require(rec, "question"), objects, "question")
    choices: dict[str, list[str]] = {}
    for field in ("answer_choices", "rationale_choices"):
        raw = require(rec, field)
        if not isinstance(raw, list) or len(raw) != NUM_CHOICES:
            raise ValueError(f"field {field!r} must be a list of {NUM_CHOICES} token lists")
        choices[field] = [render_tokens(c, objects, f"{field}[{j}]") for j, c in enumerate(raw)]
    labels: dict[str, int | None] = {}
    for field in ("answer_label", "rationale_label"):
        if field not in rec:
            if require_labels:
                raise ValueError(f"missing field {field!r}")
            labels[field] = None
            continue
        value = check_int(rec[field], field)
        if not 0 <= value < NUM_CHOICES:
            raise ValueError(f"field {field!r} must be 0-{NUM_CHOICES - 1}, got {value}")
        labels[field] = value
    img_fn = check_text(require(rec, "img_fn"), "img_fn")
    metadata_fn = check_text(require(rec, "metadata_fn"), "metadata_fn")
    if root is not None:
        image = safe_relpath(f"{IMAGE_DIR}/{img_fn}", root)
        metadata = safe_relpath(f"{IMAGE_DIR}/{metadata_fn}", root)
    else:
        image, metadata = None, f"{IMAGE_DIR}/{metadata_fn}"
    meta: dict[str, Any] = {
        "annot_id": annot_id,
        "question": question,
        "answer_choices": choices["answer_choices"],
        "rationale_choices": choices["rationale_choices"],
        **labels,
        "objects": list(objects),
        "img_fn": img_fn,
        "metadata_fn": metadata,
    }
    texts = (question, *choices["answer_choices"], *choices["rationale_choices"])
    if annot_id in seen:
        raise ValueError(f"duplicate annot_id {annot_id!r}")
    return Sample(id=annot_id, image=image, texts=texts, meta=meta)
