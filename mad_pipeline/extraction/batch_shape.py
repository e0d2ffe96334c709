"""Every teacher forward of an extraction has the same batch shape, so a row's features do not depend on its batch.

Matrix products choose their kernel by shape, on CPU as on GPU: a batch of one to three rows goes through another
path than a batch of 32, and the results differ in the last bits. On a 2-core AMD EPYC, the shapes-clip teacher's
pooled image embedding differs by up to 7e-7 between a batch of one and a batch of 32, and its text embeddings by up
to 2e-6. In an fp16 store of 98 rows, one of the 256 pooled values of its 2-row last batch came out one step apart
from the same image's row in another store, which changed the zero-shot logits and so every run distilled from it.
Rows are content-addressed and copied between stores (a store built over a subset takes its rows from a donor
store), so one image's row must be the same whichever store and batch computed it. The short last batch of a shard
is therefore padded to the full batch size by repeating its last input, and the padding's outputs are dropped: every
forward has the same shape. (A compiled tower gains too: a short batch would otherwise compile another graph.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..teachers.base import TextBatch


def pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with its last row repeated up to ``size`` rows (``x`` itself when it has ``size`` rows or more)."""
    n = x.shape[0]
    if n >= size or n == 0:
        return x
    return torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])])


def pad_items(items: Sequence, size: int) -> list:
    """``items`` with its last item repeated up to ``size`` items."""
    items = list(items)
    return items + items[-1:] * (size - len(items)) if items else items


def fixed_shape(forward: Callable[[torch.Tensor], Sequence[torch.Tensor]], size: int
                ) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """``forward`` run on batches padded to ``size`` rows; each output is cut back to the batch's own rows."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        return tuple(t[:n] for t in forward(pad_rows(x, size)))

    return run


def encode_texts(teacher, texts: Sequence[str], size: int) -> tuple[TextBatch, torch.Tensor, torch.Tensor]:
    """The text teacher's forward over ``texts`` (at most ``size``) at the fixed batch shape: the tokenised batch,
    the tokens and the pooled embedding, each cut back to ``texts``' own rows."""
    n = len(texts)
    batch = teacher.tokenize(pad_items(texts, size))
    tokens, pooled = teacher.encode_text_tokens(batch)
    own = TextBatch(batch.ids[:n], batch.mask[:n], batch.lengths[:n], batch.spans[:n])
    return own, tokens[:n], pooled[:n]


__all__ = ["encode_texts", "fixed_shape", "pad_items", "pad_rows"]
