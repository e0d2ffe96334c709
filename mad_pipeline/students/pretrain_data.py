"""The pretraining's data (``mad student pretrain``): the pool of rendered scenes, the images as the student sees
them, the captions' tokens and BERT's masking (plus whole places, ``--place-mask``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..shapes.pairs import pool_scene
from ..shapes.world import decode_jpeg, encode_jpeg, render
from .vilt import VILT_MEAN, VILT_STD

PLACE_WORDS = ("top", "bottom", "left", "right", "center")  # the words of the world's nine places
FIRST_WORD_ID = 999  # BERT-uncased: ids below are [PAD], [unused*], [UNK], [CLS], [SEP], [MASK]


@dataclass
class Pool:
    scenes: list
    images: torch.Tensor  # (N, 64, 64, 3) uint8, JPEG round-tripped like the dataset files


def make_pool(seed: int, start: int, n: int, tick: Callable[[int], None] | None = None) -> Pool:
    """Scenes ``start .. start + n - 1`` of the ``student-pretrain`` stream, rendered."""
    scenes, images = [], []
    for i in range(start, start + n):
        scene = pool_scene(seed, i)
        scenes.append(scene)
        images.append(decode_jpeg(encode_jpeg(render(scene))))
        if tick is not None:
            tick(1)
    return Pool(scenes, torch.from_numpy(np.stack(images)))


def pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S), normalised as the student's preprocessing does (mean = std = 0.5)."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(VILT_MEAN).view(1, 3, 1, 1)) / torch.tensor(VILT_STD).view(1, 3, 1, 1)


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, prob: float, tokenizer, rng: np.random.Generator,
                bert: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``prob`` of each row's maskable tokens (at least one) chosen; of those 80% ``[MASK]``, 10% a
    random token, 10% unchanged (``bert=False``: all ``[MASK]``, for evaluation). Returns (input ids, chosen)."""
    ids = ids.clone()
    chosen = torch.zeros_like(maskable)
    for r in range(ids.shape[0]):
        cand = np.flatnonzero(maskable[r].numpy())
        k = max(1, int(round(prob * len(cand))))
        chosen[r, torch.from_numpy(rng.choice(cand, size=k, replace=False))] = True
    how = torch.from_numpy(rng.random(ids.shape)) if bert else torch.zeros(ids.shape, dtype=torch.float64)
    randoms = torch.from_numpy(rng.integers(FIRST_WORD_ID, len(tokenizer), size=ids.shape))
    ids[chosen & (how < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (how >= 0.8) & (how < 0.9)
    ids[swap] = randoms[swap]
    return ids, chosen


def mask_place(ids: torch.Tensor, masked: torch.Tensor, chosen: torch.Tensor, tokenizer, rng: np.random.Generator,
               share: float) -> None:
    """In a ``share`` of the rows, one whole place (the run of place words: ``top left``, ``center``) chosen and
    replaced by ``[MASK]`` besides BERT's masking, in place. A place is two words of which the text decides one
    half ("top" is followed by "left" or "right"): masked whole, only the image can say which."""
    words = torch.tensor(tokenizer.convert_tokens_to_ids(list(PLACE_WORDS)))
    is_place = torch.isin(ids, words)
    for r in range(ids.shape[0]):
        if rng.random() >= share:
            continue
        flags = is_place[r].tolist()
        starts = [i for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1])]
        if not starts:
            continue
        a = b = starts[int(rng.integers(len(starts)))]
        while b < len(flags) and flags[b]:
            b += 1
        chosen[r, a:b] = True
        masked[r, a:b] = tokenizer.mask_token_id


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, maskable = real non-special tokens)."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length,
                    return_special_tokens_mask=True, return_tensors="pt")
    maskable = (enc["attention_mask"] == 1) & (enc["special_tokens_mask"] == 0)
    return enc["input_ids"].long(), enc["attention_mask"].long(), maskable


__all__ = ["FIRST_WORD_ID", "PLACE_WORDS", "Pool", "make_pool", "mask_place", "mask_tokens", "pixels", "tokenize"]
