"""List the teacher registry."""

from __future__ import annotations

from dataclasses import dataclass

from mad_pipeline.teachers import list_teachers


@dataclass(frozen=True)
class TeachersConfig:
    pass


def run(cfg: TeachersConfig) -> list[dict]:
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
    return out
