"""Did the pretrained student learn? Its figures against a from-scratch model given the same labelled steps.

On held-out scenes of the ``student-pretrain`` stream (indices past the training pool: never trained on):

- **ITM accuracy**: each scene with its caption, a hard negative (one attribute changed) and another scene's caption;
  accuracy of the ITM head, positives weighted 1/2, hard and easy negatives 1/4 each (chance = 0.5), and the hard
  negatives' accuracy alone.
- **MLM accuracy**: 15% of each caption's tokens (at least one) replaced by ``[MASK]``; accuracy on all of them and on
  the *content* words only (colours, shapes, places, the grey box: the words the image decides), and per kind
  (colour, shape, place). For the pretrained model the same per kind with each caption shown *another* scene's image
  (``mlm_<kind>_other_image``): a kind the model reads from the image drops there; one it guesses from the text
  ("top" is followed by "left" or "right") does not.
- **probes**: the first object's colour and shape and the number of objects, from the features of the image with an
  empty text (the pooled output and the mean of the patch tokens, concatenated). *Fine-tuned* (``probe_*``): the
  model and a linear layer per label trained end to end for ``probe_steps`` on scenes of the training pool, accuracy
  on the held-out scenes; *linear* (``linear_probe_*``, the pretrained model only): the same linear layers on its
  frozen features.

The comparison (*from scratch*, same architecture and seed): a fresh model trained for the same ``probe_steps`` on
each objective's labels -- ITM + MLM for the ITM and MLM figures, the probe labels end to end for the probe figures.
So both models get the same number of labelled steps on the same measure, the same way; the pretrained one had its
pretraining before them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes.pairs import caption, first_object_labels, hard_negative
from .pretrain import (
    Pool,
    PretrainModel,
    PretrainSettings,
    build_model,
    mask_tokens,
    pixels,
    tokenize,
    train,
)
from .pretrain_data import PLACE_WORDS
from .vilt import load_tokenizer

PROBES = (("colour", 6), ("shape", 4), ("count", 3))
WORD_KINDS = {"colour": ("red", "green", "blue", "yellow", "purple", "orange"),
              "shape": ("circle", "square", "triangle", "cross"),
              "place": PLACE_WORDS}
CONTENT_WORDS = (*(w for words in WORD_KINDS.values() for w in words), "grey", "box")


@dataclass(frozen=True)
class EvalSettings:
    probe_steps: int = 200  # labelled steps of each comparison (the linear probes; the from-scratch models)
    probe_train: int = 2000  # scenes of the training pool the probes train on
    batch_size: int = 64
    probe_lr: float = 1e-2


def _batches(n: int, size: int):
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))


@torch.no_grad()
def itm_accuracy(model: PretrainModel, pool: Pool, seed: int, batch_size: int) -> dict[str, float]:
    tok = load_tokenizer(None)
    rng = np.random.default_rng([seed, 21])
    n = len(pool.scenes)
    texts = {"positive": [caption(s, rng) for s in pool.scenes],
             "hard": [hard_negative(s, rng) for s in pool.scenes],
             "easy": [caption(pool.scenes[(i + 1 + int(rng.integers(n - 1))) % n], rng) for i in range(n)]}
    acc = {}
    for kind, tx in texts.items():
        right = 0
        for sl in _batches(n, batch_size):
            ids, att, _ = tokenize(tok, tx[sl], model.config.max_position_embeddings)
            pred = model.itm_logits(pixels(pool.images[sl]), ids, att).argmax(1)
            right += int((pred == (1 if kind == "positive" else 0)).sum())
        acc[kind] = right / n
    return {"itm_accuracy": 0.5 * acc["positive"] + 0.25 * (acc["hard"] + acc["easy"]),
            "itm_hard_negatives": acc["hard"], "itm_positives": acc["positive"]}


@torch.no_grad()
def mlm_accuracy(model: PretrainModel, pool: Pool, seed: int, batch_size: int, mask_prob: float,
                 image_shift: int = 0) -> dict[str, float]:
    """MLM accuracy on all masked tokens, on the content words, and per kind of content word (``mlm_colour``,
    ``mlm_shape``, ``mlm_place``). ``image_shift`` > 0: each caption is shown another scene's image (the one that
    many places on), same captions and masks -- what is still right is what the text alone decides."""
    tok = load_tokenizer(None)
    content = torch.tensor(tok.convert_tokens_to_ids(list(CONTENT_WORDS)))
    kinds = {k: torch.tensor(tok.convert_tokens_to_ids(list(words))) for k, words in WORD_KINDS.items()}
    rng = np.random.default_rng([seed, 22])
    caps = [caption(s, rng) for s in pool.scenes]
    images = torch.roll(pool.images, image_shift, dims=0) if image_shift else pool.images
    right, total = {}, {}
    for sl in _batches(len(caps), batch_size):
        ids, att, maskable = tokenize(tok, caps[sl], model.config.max_position_embeddings)
        masked, chosen = mask_tokens(ids, maskable, mask_prob, tok, rng, bert=False)
        pred = model.mlm_logits(pixels(images[sl]), masked, att, chosen).argmax(1)
        truth = ids[chosen]
        hit = pred == truth
        for name, sel in (("all", torch.ones_like(hit)), ("content", torch.isin(truth, content)),
                          *((k, torch.isin(truth, v)) for k, v in kinds.items())):
            right[name] = right.get(name, 0) + int((hit & sel).sum())
            total[name] = total.get(name, 0) + int(sel.sum())
    acc = {k: right[k] / max(1, total[k]) for k in right}
    return {"mlm_accuracy": acc["all"], "mlm_content_accuracy": acc["content"],
            **{f"mlm_{k}": acc[k] for k in WORD_KINDS}}


def mlm_grounding(model: PretrainModel, pool: Pool, seed: int, batch_size: int, mask_prob: float) -> dict[str, float]:
    """Per kind of content word, MLM accuracy with another scene's image (``mlm_<kind>_other_image``): against
    ``mlm_<kind>`` it says how much of that kind the model reads from the image rather than guesses from the text."""
    other = mlm_accuracy(model, pool, seed, batch_size, mask_prob, image_shift=1)
    return {f"mlm_{k}_other_image": other[f"mlm_{k}"] for k in WORD_KINDS}


def image_features(model: PretrainModel, images: torch.Tensor) -> torch.Tensor:
    """The pooled output and the mean patch token of each image with an empty text, concatenated: (N, 2H)."""
    tok = load_tokenizer(None)
    ids, att, _ = tokenize(tok, [""] * images.shape[0], model.config.max_position_embeddings)
    hidden, pooled = model.encode(pixels(images), ids, att)
    return torch.cat([pooled, hidden[:, ids.shape[1] + 1:].mean(1)], dim=1)


def probe_labels(pool: Pool) -> torch.Tensor:
    return torch.tensor([first_object_labels(s) for s in pool.scenes])


def _probe_heads(width: int, seed: int) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    return torch.nn.ModuleList(torch.nn.Linear(width, k) for _, k in PROBES)


def _probe_loss(heads, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(h(feats), labels[:, j]) for j, h in enumerate(heads))


def _probe_scores(heads, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {f"probe_{name}": float((h(feats).argmax(1) == labels[:, j]).float().mean())
            for j, ((name, _), h) in enumerate(zip(PROBES, heads, strict=True))}


def linear_probes(model: PretrainModel, train_pool: Pool, test_pool: Pool, e: EvalSettings,
                  seed: int) -> dict[str, float]:
    """Frozen features, a linear layer per label trained ``probe_steps`` (Adam, batches of ``batch_size``)."""
    with torch.no_grad():
        train_x = torch.cat([image_features(model, train_pool.images[sl])
                             for sl in _batches(len(train_pool.scenes), e.batch_size)])
        test_x = torch.cat([image_features(model, test_pool.images[sl])
                            for sl in _batches(len(test_pool.scenes), e.batch_size)])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_y, test_y = probe_labels(train_pool), probe_labels(test_pool)
    heads = _probe_heads(train_x.shape[1], seed)
    opt = torch.optim.Adam(heads.parameters(), lr=e.probe_lr)
    rng = np.random.default_rng([seed, 23])
    for _ in range(e.probe_steps):
        idx = torch.from_numpy(rng.choice(len(train_x), size=min(e.batch_size, len(train_x)), replace=False))
        opt.zero_grad(set_to_none=True)
        _probe_loss(heads, train_x[idx], train_y[idx]).backward()
        opt.step()
    with torch.no_grad():
        return _probe_scores(heads, test_x, test_y)


def finetuned_probes(model: PretrainModel, s: PretrainSettings, train_pool: Pool, test_pool: Pool,
                     e: EvalSettings) -> dict[str, float]:
    """A copy of ``model`` and linear layers trained end to end on the probe labels for ``probe_steps`` (AdamW at
    the pretraining's learning rate, a short warm-up); accuracy on ``test_pool``."""
    model = copy.deepcopy(model)
    heads = _probe_heads(2 * model.config.hidden_size, s.seed)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    train_y, test_y = probe_labels(train_pool), probe_labels(test_pool)
    rng = np.random.default_rng([s.seed, 24])
    model.train()
    for step in range(e.probe_steps):
        for g in opt.param_groups:
            g["lr"] = s.lr * min(1.0, (step + 1) / max(1, min(s.warmup, e.probe_steps // 10)))
        idx = torch.from_numpy(rng.choice(len(train_y), size=min(e.batch_size, len(train_y)), replace=False))
        opt.zero_grad(set_to_none=True)
        _probe_loss(heads, image_features(model, train_pool.images[idx]), train_y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        test_x = torch.cat([image_features(model, test_pool.images[sl])
                            for sl in _batches(len(test_pool.scenes), e.batch_size)])
        return _probe_scores(heads, test_x, test_y)


def evaluate(model: PretrainModel, s: PretrainSettings, e: EvalSettings, train_pool: Pool,
             test_pool: Pool) -> dict[str, float]:
    """ITM, MLM and probe figures of ``model`` on ``test_pool``."""
    probe_pool = _head(train_pool, e.probe_train)
    return {**itm_accuracy(model, test_pool, s.seed, e.batch_size),
            **mlm_accuracy(model, test_pool, s.seed, e.batch_size, s.mask_prob),
            **mlm_grounding(model, test_pool, s.seed, e.batch_size, s.mask_prob),
            **finetuned_probes(model, s, probe_pool, test_pool, e),
            **{f"linear_{k}": v for k, v in linear_probes(model, probe_pool, test_pool, e, s.seed).items()}}


def compare(model: PretrainModel, s: PretrainSettings, e: EvalSettings, train_pool: Pool,
            test_pool: Pool, progress=None) -> dict[str, Any]:
    """``{"pretrained": figures, "scratch": figures}``: the from-scratch model trained ``probe_steps`` on ITM + MLM
    (same settings and draws as pretraining, shorter) for its ITM / MLM figures; both models fine-tuned the same way
    on the probe labels for the probe figures (and the pretrained one's linear probes besides)."""
    pretrained = evaluate(model, s, e, train_pool, test_pool)
    short = replace(s, steps=e.probe_steps, warmup=min(s.warmup, max(1, e.probe_steps // 10)), cell_steps=0)
    scratch_model, _ = train(short, train_pool, progress)
    scratch = {**itm_accuracy(scratch_model, test_pool, s.seed, e.batch_size),
               **mlm_accuracy(scratch_model, test_pool, s.seed, e.batch_size, s.mask_prob),
               **finetuned_probes(build_model(s.student, s.seed, s.pos_init_std), s, _head(train_pool, e.probe_train),
                                  test_pool, e)}
    return {"pretrained": {k: round(v, 4) for k, v in pretrained.items()},
            "scratch": {k: round(v, 4) for k, v in scratch.items()}}


def _head(pool: Pool, n: int) -> Pool:
    return Pool(pool.scenes[:n], pool.images[:n])


__all__ = ["CONTENT_WORDS", "EvalSettings", "PROBES", "WORD_KINDS", "compare", "evaluate", "finetuned_probes",
           "image_features", "itm_accuracy", "linear_probes", "mlm_accuracy", "mlm_grounding"]
