"""Which architecture a checkpoint holds, told from its tensor shapes, checked against what a teacher expects.

A checkpoint of the wrong size would otherwise fail deep inside ``load_state_dict`` with a list of tensor-shape
mismatches; this module turns that into one line that names both architectures (``checkpoint W is ViT-B-32 (by its
tensor shapes); teacher clip-vit-l expects ViT-L-14-quickgelu``). Only the standard open_clip ViT / text
transformer layout and BERT-like transformers encoders are summarised; anything else is left to the libraries.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import TeacherError

# hidden size x layers of the registry's transformers teachers (their configs are on the hub, not here)
KNOWN_TEXT = {"sentence-transformers/all-MiniLM-L6-v2": (384, 6), "FacebookAI/roberta-base": (768, 12),
              "FacebookAI/roberta-large": (1024, 24)}


def _layers(shapes: dict[str, list[int]], prefix: str) -> int:
    """Number of blocks ``prefix<i>.`` in the state dict."""
    ids = {int(n) for k in shapes if k.startswith(prefix) and (n := k[len(prefix) :].split(".", 1)[0]).isdigit()}
    return max(ids) + 1 if ids else 0


# ---------------------------------------------------------------------------------------------------- open_clip
def clip_from_shapes(shapes: dict[str, list[int]]) -> dict[str, Any] | None:
    """Image and text tower sizes of an open_clip CLIP state dict (None: not the standard ViT layout)."""
    conv, pos = shapes.get("visual.conv1.weight"), shapes.get("visual.positional_embedding")
    if not conv or not pos or len(conv) != 4 or len(pos) != 2:
        return None
    grid = round((pos[0] - 1) ** 0.5)
    if grid * grid != pos[0] - 1:
        return None
    out: dict[str, Any] = {"image": {"width": conv[0], "layers": _layers(shapes, "visual.transformer.resblocks."),
                                     "patch_size": conv[2], "image_size": grid * conv[2]}, "text": None,
                           "embed_dim": (shapes.get("visual.proj") or [None, None])[1]}
    for pre in ("", "text."):
        tok = shapes.get(pre + "token_embedding.weight")
        tpos = shapes.get(pre + "positional_embedding")
        if tok and tpos:
            out["text"] = {"width": tok[1], "layers": _layers(shapes, pre + "transformer.resblocks."),
                           "context_length": tpos[0], "vocab_size": tok[0]}
    return out


def clip_from_config(cfg: dict | None) -> dict[str, Any] | None:
    """The same summary from an open_clip model config (None: a timm / ResNet / HF tower, not summarised)."""
    if not cfg:
        return None
    try:
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        v = CLIPVisionCfg(**cfg.get("vision_cfg", {}))
        t = CLIPTextCfg(**cfg.get("text_cfg", {}))
    except TypeError:
        return None
    size, patch = v.image_size, v.patch_size
    if v.timm_model_name or not isinstance(v.layers, int) or not isinstance(size, int) or not isinstance(patch, int):
        return None
    text = None if t.hf_model_name else {"width": t.width, "layers": t.layers, "context_length": t.context_length,
                                         "vocab_size": t.vocab_size}
    return {"image": {"width": v.width, "layers": v.layers, "patch_size": patch, "image_size": size},
            "text": text, "embed_dim": cfg.get("embed_dim")}


@functools.lru_cache(maxsize=4)
def _known_clips(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    import open_clip

    from ..hashing import canonical_json

    out = []
    for name in names:
        s = clip_from_config(open_clip.get_model_config(name))
        if s is not None:
            out.append((name, canonical_json(s)))
    return tuple(out)


def clip_name(summary: dict) -> str | None:
    """The shortest open_clip config name with these sizes (``ViT-B-32`` rather than ``ViT-B-32-quickgelu``)."""
    import open_clip

    from ..hashing import canonical_json

    want = canonical_json(summary)
    names = [n for n, s in _known_clips(tuple(open_clip.list_models())) if s == want]
    return min(names, key=lambda n: (len(n), n)) if names else None


def _describe_clip(s: dict) -> str:
    i, t = s["image"], s["text"]
    out = f"image width {i['width']} x {i['layers']} layers, patch {i['patch_size']} at {i['image_size']} px"
    if t:
        out += f"; text width {t['width']} x {t['layers']} layers"
    return out


def _differ(a: dict, b: dict) -> bool:
    """Differ where both summaries know the tower (a checkpoint with an HF text tower has no ``text`` here)."""
    return (a["image"] != b["image"] or (a["text"] is not None and b["text"] is not None and a["text"] != b["text"])
            or (a["embed_dim"] is not None and b["embed_dim"] is not None and a["embed_dim"] != b["embed_dim"]))


def check_clip(shapes: dict[str, list[int]], cfg: dict | None, where: str, teacher: str, expects: str) -> None:
    """One line when the checkpoint's tensor shapes are another architecture than the teacher's config."""
    got, want = clip_from_shapes(shapes), clip_from_config(cfg)
    if got is None or want is None or not _differ(got, want):
        return
    is_ = clip_name(got) or _describe_clip(got)
    expected = expects if not expects.startswith("local-dir:") else (clip_name(want) or _describe_clip(want))
    raise TeacherError(f"checkpoint {where} is {is_} (by its tensor shapes); teacher {teacher} expects {expected}")


# ---------------------------------------------------------------------------------------------------- transformers
def text_from_shapes(shapes: dict[str, list[int]]) -> tuple[int, int] | None:
    """(hidden size, layers) of a BERT-like encoder's state dict."""
    emb = next((s for k, s in shapes.items() if k.endswith("embeddings.word_embeddings.weight")), None)
    if not emb or len(emb) != 2:
        return None
    prefix = next(k for k in shapes if k.endswith("embeddings.word_embeddings.weight"))
    prefix = prefix[: -len("embeddings.word_embeddings.weight")]
    return emb[1], _layers(shapes, prefix + "encoder.layer.")


def _text_name(hl: tuple[int, int]) -> str:
    known = [m.split("/")[-1] for m, v in KNOWN_TEXT.items() if v == hl]
    return f"hidden {hl[0]} x {hl[1]} layers" + (f" ({known[0]})" if known else "")


def check_text(shapes: dict[str, list[int]], config: dict, where: str, teacher: str, model_id: str,
               expected: tuple[int, int] | None = None) -> None:
    """One line when a transformers checkpoint does not match its own config.json, or the teacher's model (the
    registry's, or ``expected``: the sizes of the directory an ``hf:DIR`` teacher names)."""
    got = text_from_shapes(shapes)
    if got is None:
        return
    own = (config.get("hidden_size"), config.get("num_hidden_layers"))
    if None not in own and own != got:
        raise TeacherError(f"checkpoint {where} is {_text_name(got)} (by its tensor shapes); its config.json "
                           f"says hidden {own[0]} x {own[1]} layers")
    want = expected or KNOWN_TEXT.get(model_id)
    if want is not None and want != got:
        raise TeacherError(f"checkpoint {where} is {_text_name(got)} (by its tensor shapes); teacher {teacher} "
                           f"expects {_text_name(want)}")
