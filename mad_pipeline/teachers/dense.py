"""Dense joint-space patch features of an open_clip ViT (MaskCLIP's value path), computed in the same forward as the
tokens.

CLIP's last-layer patch tokens, mapped by the visual projection, are not localised: a patch's ``ln_post(x_k) @ proj``
carries mostly the image's global content. MaskCLIP (Zhou, Loy and Dai, ECCV 2022, *Extract Free Dense Labels from
CLIP*) reads the last transformer block differently: each position takes only its own value vector, without the
query-key attention that mixes it with every other position. Here, for the last block's input ``x`` (the residual
stream after the second-to-last block)::

    dense_k = ln_post(ls_1(out_proj(W_v ln_1(x_k) + b_v))) @ proj

where ``W_v``, ``b_v`` are the value third of ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias``,
``out_proj`` its output projection, ``ls_1`` the block's layer scale (usually the identity), ``ln_post`` and
``proj`` the tower's final norm and visual projection. The block's residual branch and MLP are left out (as in
ClearCLIP / SCLIP, which found the residual stream to be what blurs the localisation), so ``dense_k`` depends on
patch ``k``'s own value only. The CLS position is computed the same way (row 0).

:func:`dense_support` says whether a vision tower has this path (a ViT whose last block uses PyTorch's
``nn.MultiheadAttention``, a visual projection, no attentional pool); :func:`last_block_input` captures the input of
the last block during the usual forward; :func:`value_path` computes the features from it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def dense_support(visual) -> str | None:
    """None when ``visual`` (an open_clip vision tower) has MaskCLIP's value path, else why not (one phrase)."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks:
        return "not a ViT (no transformer blocks)"
    if getattr(visual, "attn_pool", None) is not None:
        return "an attentional pool (its tokens are not in the projection's input space)"
    if getattr(visual, "proj", None) is None:
        return "no visual projection"
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None or hasattr(last, "ln_1_kv"):
        return f"its last block ({type(last).__name__}) has no packed q/k/v projection"
    return None


@contextlib.contextmanager
def last_block_input(visual):
    """Within the block, a forward runs as usual and ``seen[0]`` is the last transformer block's input, batch first
    ``(B, T, D)``."""
    transformer = visual.transformer
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["q_x"]
        seen[:] = [x if getattr(transformer, "batch_first", True) else x.transpose(0, 1)]

    handle = transformer.resblocks[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def value_path(visual, x: torch.Tensor) -> torch.Tensor:
    """``(B, T, E)`` dense joint-space features from the last block's input ``x (B, T, D)`` (module docstring)."""
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    d = x.shape[-1]
    w = attn.in_proj_weight[2 * d :]
    b = attn.in_proj_bias[2 * d :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), w, b)
    y = block.ls_1(attn.out_proj(v))
    return visual.ln_post(y) @ visual.proj


__all__ = ["dense_support", "last_block_input", "value_path"]
