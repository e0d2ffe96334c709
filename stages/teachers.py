"""List the teacher registry, and the library forms that name any other open_clip or transformers model."""

from __future__ import annotations

from dataclasses import dataclass

from mad_pipeline.teachers import list_teachers

FORMS = [
    {"name": "open_clip:MODEL/PRETRAINED", "towers": ["image", "text"], "family": "open_clip",
     "model": "any ViT pair in open_clip.list_pretrained()", "weights": "hub, or --weights FILE",
     "description": "e.g. open_clip:ViT-B-32/laion2b_s34b_b79k, open_clip:ViT-L-14/dfn2b; open_clip:MODEL with "
                    "--weights for a local checkpoint"},
    {"name": "hf:REPO", "towers": ["text"], "family": "transformers", "model": "hub id or save_pretrained dir",
     "weights": "hub, or the directory", "description": "a transformers text encoder, e.g. hf:BAAI/bge-small-en-v1.5 "
                                                         "or hf:/models/my-encoder"},
]


@dataclass(frozen=True)
class TeachersConfig:
    pass


def run(cfg: TeachersConfig) -> list[dict]:
    """One row per registered teacher (their names are short aliases), then one per library form."""
    out = []
    for s in list_teachers():
        weights = s.pretrained or ("packaged (offline)" if s.local_weights else "")
        if s.family == "transformers" and not s.local_weights:
            weights = "hub"
        if s.model.startswith("local-dir:"):
            weights = "shipped with mad"
        out.append({"name": s.name, "towers": list(s.towers), "family": s.family, "model": s.model.split("/")[-1]
                    if s.model.startswith("local-dir:") else s.model, "weights": weights,
                    "description": s.description})
    return out + [dict(f) for f in FORMS]
