"""Zero-shot VQA with a CLIP teacher on the shapes world, per question type, against the majority baseline.

Zero-shot: each candidate answer valid for the question's type is rendered as a caption that states it (for
"Where is the red circle?": ``"a red circle in the top left"``, ``"a red circle at the top"``, ... nine places;
for "Is there a cross on the left?": ``"a cross on the left"`` vs ``"no cross on the left"``), the image is scored
against each caption, the argmax is the prediction. The majority baseline predicts, per question type, the most
common answer of the training split. Every answer in the world is already in the official normalised form and
at least 7 of its 10 annotators agree, so exact match equals the official VQA accuracy here.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .items import FAMILIES, QUESTIONS, Balancer, ask_vqa
from .world import decode_jpeg, encode_jpeg, make_scene, render, scene_rng


def candidates(question: str) -> tuple[str, tuple[str, ...], list[str]] | None:
    """(question type, candidate answers, their prompt texts) for a shapes-world question; None otherwise."""
    parsed = QUESTIONS.parse(question)
    if parsed is None:
        return None
    t, p = parsed
    return t.family, t.answers, t.prompts(p)


def prompt(question: str, answer: str) -> str | None:
    """The caption stating ``answer`` to ``question`` (None if either is not of the shapes world)."""
    parsed = QUESTIONS.parse(question)
    if parsed is None or answer not in parsed[0].answers:
        return None
    return parsed[0].prompt(parsed[1], answer)


@torch.no_grad()
def predict(encode_images: Callable[[Sequence[int]], torch.Tensor], encode_texts: Callable[[list[str]], torch.Tensor],
            questions: Sequence[str], image_of: Sequence[int], batch: int = 256) -> list[str | None]:
    """Zero-shot answers. ``encode_images(indices)`` / ``encode_texts(texts)`` return L2-normalised embeddings;
    ``image_of[k]`` is question k's image index. Non-shapes questions get None."""
    cands = [candidates(q) for q in questions]
    texts = sorted({t for c in cands if c is not None for t in c[2]})
    text_emb = torch.cat([encode_texts(texts[i: i + batch]) for i in range(0, len(texts), batch)])
    pos = {t: i for i, t in enumerate(texts)}
    uniq = sorted(set(image_of))
    img_emb = torch.cat([encode_images(uniq[i: i + batch]) for i in range(0, len(uniq), batch)])
    row = {im: i for i, im in enumerate(uniq)}
    out: list[str | None] = []
    for c, im in zip(cands, image_of, strict=True):
        if c is None:
            out.append(None)
            continue
        sims = text_emb[[pos[t] for t in c[2]]] @ img_emb[row[im]]
        out.append(c[1][int(sims.argmax())])
    return out


def report(families: Sequence[str], truth: Sequence[str], preds: Sequence[str | None],
           train_answers: dict[str, Counter]) -> dict[str, Any]:
    """Per-type accuracy vs the majority-answer baseline (most common training answer of that type)."""
    rows = {}
    for fam in FAMILIES:
        ks = [k for k, f in enumerate(families) if f == fam]
        if not ks:
            continue
        majority = train_answers[fam].most_common(1)[0][0] if train_answers.get(fam) else None
        acc = float(np.mean([preds[k] == truth[k] for k in ks]))
        base = float(np.mean([truth[k] == majority for k in ks]))
        rows[fam] = {"n": len(ks), "zero_shot": round(acc, 4), "majority": round(base, 4),
                     "majority_answer": majority, "chance": round(1.0 / _n_answers(fam), 4)}
    n = sum(r["n"] for r in rows.values())
    rows["all"] = {"n": n,
                   "zero_shot": round(sum(r["zero_shot"] * r["n"] for r in rows.values()) / max(1, n), 4),
                   "majority": round(sum(r["majority"] * r["n"] for r in rows.values()) / max(1, n), 4)}
    return rows


def _n_answers(fam: str) -> int:
    from .items import TEMPLATES

    return next(len(t.answers) for t in TEMPLATES if t.family == fam)


def model_encoders(model, preprocess_u8: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   tokenizer, precision: str = "fp32"):
    """Encoders over a uint8 image tensor (N, H, W, 3) for :func:`predict`."""
    from .train import _autocast, encode_text_short

    def enc_img(ix):
        with _autocast(precision):
            return F.normalize(model.encode_image(preprocess_u8(images[list(ix)])).float(), dim=-1)

    def enc_txt(texts):
        with _autocast(precision):
            return encode_text_short(model, tokenizer(texts)).float()

    return enc_img, enc_txt


def generated_questions(seed: int, split: str, n_images: int, render_images: bool = True):
    """The questions (and images) the dataset generator writes for ``split``, in memory."""
    bal = Balancer()
    imgs, fams, qs, truth, image_of = [], [], [], [], []
    for i in range(n_images):
        scene = make_scene(seed, split, i)
        for q in ask_vqa(scene, bal, scene_rng(seed, split, i, 1)):
            fams.append(q.family)
            qs.append(q.text)
            truth.append(q.answer)
            image_of.append(i)
        if render_images:
            imgs.append(decode_jpeg(encode_jpeg(render(scene))))
    images = torch.from_numpy(np.stack(imgs)) if render_images else None
    return images, fams, qs, truth, image_of


@torch.no_grad()
def evaluate_generated(model, tokenizer, seed: int = 0, size: int = 2000, splits: Sequence[str] = ("val", "shift"),
                       precision: str = "fp32") -> dict[str, Any]:
    """Zero-shot report on the splits `mad datasets make shapes --seed SEED --size SIZE` would write."""
    from .formats import split_sizes
    from .train import normalize_images

    sizes = split_sizes(size)
    _, tf, _, tt, _ = generated_questions(seed, "train", sizes["train"], render_images=False)
    train_answers: dict[str, Counter] = defaultdict(Counter)
    for f, a in zip(tf, tt, strict=True):
        train_answers[f][a] += 1
    out = {}
    model.eval()
    for split in splits:
        images, fams, qs, truth, image_of = generated_questions(seed, split, sizes[split])
        enc_img, enc_txt = model_encoders(model, normalize_images, images, tokenizer, precision)
        preds = predict(enc_img, enc_txt, qs, image_of)
        out[split] = report(fams, truth, preds, train_answers)
    return out


def _load_vqa(root: Path, split: str) -> tuple[list[dict], dict[int, dict], str]:
    """(questions, annotations by question_id, image folder) of one split of a written shapes world."""
    from ..errors import InputError
    from .formats import VQA_SUBTYPES

    sub = VQA_SUBTYPES.get(split, split)
    if sub not in VQA_SUBTYPES.values():
        raise InputError(f"--split {split!r}: shapes world splits are {', '.join(VQA_SUBTYPES)}")
    qf = root / f"v2_OpenEnded_mscoco_{sub}_questions.json"
    af = root / f"v2_mscoco_{sub}_annotations.json"
    for f in (qf, af):
        if not f.is_file():
            raise InputError(f"{f}: not found (expected a world written by `mad datasets make shapes`)")
    try:
        questions = json.loads(qf.read_text(encoding="utf-8"))["questions"]
        anns = {a["question_id"]: a for a in json.loads(af.read_text(encoding="utf-8"))["annotations"]}
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{qf.parent}: not a readable VQA v2 questions/annotations pair ({e})") from None
    return questions, anns, sub


@torch.no_grad()
def evaluate_dir(root: Path, split: str, teacher, batch: int = 256) -> dict[str, Any]:
    """Zero-shot report for a teacher (``mad_pipeline.teachers`` object with ``.model``, ``.tokenizer``,
    ``.preprocess``) on a written shapes world (its root or its ``vqa/`` folder; official VQA v2 files)."""
    from PIL import Image

    from ..errors import InputError

    root = Path(root)
    if (root / "vqa").is_dir():
        root = root / "vqa"
    train_q, train_a, _ = _load_vqa(root, "train")
    questions, anns, sub = _load_vqa(root, split)
    train_answers: dict[str, Counter] = defaultdict(Counter)
    for q in train_q:
        fam = _family(q["question"])
        if fam is not None and q["question_id"] in train_a:
            train_answers[fam][train_a[q["question_id"]]["multiple_choice_answer"]] += 1
    ids = sorted({q["image_id"] for q in questions})
    index = {iid: i for i, iid in enumerate(ids)}
    dev = next(teacher.model.parameters()).device

    def enc_img(ix):
        px = []
        for i in ix:
            path = root / sub / f"COCO_{sub}_{ids[i]:012d}.jpg"
            try:
                with Image.open(path) as im:
                    px.append(teacher.preprocess(im.convert("RGB")))
            except OSError as e:
                raise InputError(f"{path}: cannot read image ({e})") from None
        return F.normalize(teacher.model.encode_image(torch.stack(px).to(dev)).float(), dim=-1)

    def enc_txt(texts):
        ids_ = teacher.tokenizer(texts).to(dev)
        return F.normalize(teacher.model.encode_text(ids_).float(), dim=-1)

    qs = [q["question"] for q in questions]
    preds = predict(enc_img, enc_txt, qs, [index[q["image_id"]] for q in questions], batch)
    fams = [_family(t) for t in qs]
    truth = [anns[q["question_id"]]["multiple_choice_answer"] for q in questions]
    keep = [k for k, f in enumerate(fams) if f is not None]
    rep = report([fams[k] for k in keep], [truth[k] for k in keep], [preds[k] for k in keep], train_answers)
    rep["skipped_non_shapes_questions"] = len(qs) - len(keep)
    return rep


def _family(question: str) -> str | None:
    c = candidates(question)
    return c[0] if c is not None else None
