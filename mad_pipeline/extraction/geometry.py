"""The geometry a store's array shapes are made from, read off a loaded teacher (or a donor store's manifest)."""

from __future__ import annotations


def image_geometry(t) -> dict:
    return {"grid": list(t.grid), "image_size": t.image_size, "num_tokens": t.num_tokens, "width": t.width,
            "embed_dim": t.embed_dim, "token_order": "CLS, then patches row-major"}


def text_geometry(t) -> dict:
    return {"max_length": t.max_length, "width": getattr(t, "text_width", t.width), "embed_dim": t.embed_dim}


GEOMETRY = {"image": image_geometry, "text": text_geometry}
