"""Pretrain a ViLT student on the shapes world's image-caption pairs (``mad student pretrain``): ITM with sampled
negatives + MLM (see :mod:`mad_pipeline.students.pretrain`), then its figures against a from-scratch model given the
same labelled steps (:mod:`mad_pipeline.students.pretrain_eval`).

Cached by content key like the other stages: the output lives at ``<cache>/runs/student-pretrain/<key>/`` (the
weights in transformers' ``ViltForMaskedLM`` layout, ``training.json``) with ``stage.json`` written last; the key
is the sha256 of every setting that changes the weights or the figures plus the library versions that do (torch,
transformers). A rerun with the same settings is served from there without training. ``out``: a copy of the weights
directory (e.g. the shipped ``mad_pipeline/assets/students/shapes-vilt-tiny``).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.errors import InputError
from mad_pipeline.hashing import content_key
from mad_pipeline.settings import not_in_key
from mad_pipeline.settings import setting as _f
from mad_pipeline.shapes.world import IMAGE_SIZE
from mad_pipeline.students.pretrain import CONFIG_FILE, META_FILE, WEIGHTS_FILE, PretrainSettings, drop_unset
from mad_pipeline.students.vilt import vilt_presets
from mad_pipeline.training.config import check_bounds

KIND = "student-pretrain"
FORMAT = 1
_D = PretrainSettings()
SHARE = {"min": 0, "max": 1, "why": "a share"}  # the bounds of a share of something
PRESETS = vilt_presets(IMAGE_SIZE)  # the students the shapes world pretrains: those with its image size


@dataclass(frozen=True)
class StudentPretrainConfig:
    student: str = _f(_D.student, f"student preset to pretrain (one with {IMAGE_SIZE} px images, the shapes world's "
                                   f"size: {', '.join(PRESETS)})")
    seed: int = _f(_D.seed, "seed of the scenes' order, captions, negatives, masks and the initialisation", min=0)
    steps: int = _f(_D.steps, "pretraining steps (one MLM forward each, and one ITM forward once ITM starts)", min=1)
    batch_size: int = _f(_D.batch_size, "images per step", min=2)
    pool_size: int = _f(_D.pool_size, "distinct training scenes of the student-pretrain stream (at least a batch)",
                        min=2)
    lr: float = _f(_D.lr, "peak learning rate (AdamW, linear warm-up, cosine decay)", min=0)
    warmup: int = _f(_D.warmup, "warm-up steps", min=0)
    mask_prob: float = _f(_D.mask_prob, "MLM: share of caption tokens predicted (BERT's 80/10/10)", **SHARE)
    negative_fraction: float = _f(_D.negative_fraction, "ITM: share of non-matching captions", **SHARE)
    hard_fraction: float = _f(_D.hard_fraction, "ITM: share of the non-matching captions that are hard negatives",
                              **SHARE)
    hard_ramp: float = _f(_D.hard_ramp, "ITM: share of the steps over which hard negatives ramp in, once let in",
                          **SHARE)
    itm_weight: float = _f(_D.itm_weight, "ITM loss weight (MLM's is 1)", min=0)
    itm_start: float = _f(_D.itm_start, "share of the steps of MLM alone before ITM joins", **SHARE)
    hard_gate: float = _f(_D.hard_gate, "ITM batch accuracy on easy negatives that lets hard negatives in", **SHARE)
    pos_init_std: float = _f(_D.pos_init_std, "std of the patches' initial position embedding (0: zeros, as "
                             "transformers starts ViLT)", min=0)
    cell_steps: int = _f(_D.cell_steps, "image phase: steps of predicting every cell's shape and colour from the "
                         "image alone, before MLM (0: none)", min=0)
    place_mask: float = _f(_D.place_mask, "MLM: share of captions with one whole place (\"top left\") masked besides",
                           **SHARE)
    itm_pooler: bool = _f(_D.itm_pooler, "save the pooler, which only ITM trains, as part of the ITM head, so that "
                          "students finetuned from these weights draw their own")
    eval_size: int = _f(500, "held-out scenes the figures are measured on (0: no figures)", min=0)
    probe_steps: int = _f(200, "labelled steps of the comparison (probes, from-scratch models)", min=1)
    probe_train: int = _f(2000, "training scenes of the probes", min=1)
    out: Path | None = _f(None, "also copy the weights directory here", key=False)
    cache: Path | None = _f(None, "cache root (default: MAD_CACHE or the user cache dir)", key=False)
    progress: bool = _f(True, "progress bars", key=False)

    def settings(self) -> PretrainSettings:
        names = {f.name for f in dataclasses.fields(PretrainSettings)}
        return PretrainSettings(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class StudentPretrainResult:
    key: str
    path: Path  # the weights directory in the cache
    out: Path | None
    cached: bool
    figures: dict[str, Any]
    timing: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "path": str(self.path), "out": None if self.out is None else str(self.out),
                "cached": self.cached, "figures": self.figures, "timing": self.timing}


def _params(cfg: StudentPretrainConfig) -> dict[str, Any]:
    """The settings in the key and the record (the optional ones only when set: older keys stay valid)."""
    return drop_unset({k: v for k, v in dataclasses.asdict(cfg).items() if k not in not_in_key(StudentPretrainConfig)})


def key_versions() -> dict[str, str]:
    """The library versions in the key: another torch or transformers may train other weights."""
    import torch
    import transformers

    return {"torch": str(torch.__version__), "transformers": str(transformers.__version__)}


def stage_key(cfg: StudentPretrainConfig) -> str:
    return content_key({"format": FORMAT, "kind": KIND, "params": _params(cfg), "versions": key_versions()})


def weights_key(cfg: StudentPretrainConfig) -> str:
    """The key of the weights alone: the settings that change them (not those of the figures: ``eval_size``,
    ``probe_steps``, ``probe_train``) and the library versions. A ``mad run`` distill stage that starts from this
    stage's output has it in its key, so other pretraining settings train other students, while measuring the
    figures differently does not."""
    from mad_pipeline.students.pretrain import settings_dict

    return content_key({"format": FORMAT, "kind": f"{KIND} weights", "settings": settings_dict(cfg.settings()),
                        "versions": key_versions()})


def check(cfg: StudentPretrainConfig) -> None:
    if cfg.student not in PRESETS:
        raise InputError(f"--student {cfg.student!r}: the shapes world pretrains {', '.join(PRESETS)} ({IMAGE_SIZE} px "
                         "images); another student takes its pretrained weights with --pretrained")
    for f in dataclasses.fields(cfg):  # every bound is the field's own
        check_bounds(f, getattr(cfg, f.name), f"--{f.name.replace('_', '-')}")
    if cfg.pool_size < cfg.batch_size:
        raise InputError(f"--pool-size {cfg.pool_size}: at least one batch (--batch-size {cfg.batch_size})")
    if cfg.out is not None and Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise InputError(f"--out {cfg.out}: exists and is not a directory")


def run(cfg: StudentPretrainConfig) -> StudentPretrainResult:
    from mad_pipeline.cache import default_cache_dir
    from mad_pipeline.pipeline import plan as plan_lib

    check(cfg)
    key = stage_key(cfg)
    root = Path(cfg.cache).expanduser() if cfg.cache else default_cache_dir()
    rec = plan_lib.read_marker(root, KIND, key)
    cached = rec is not None and (Path(rec["path"]) / "weights" / WEIGHTS_FILE).exists()
    t0 = time.perf_counter()
    if cached:
        figures, timing = rec["result"]["figures"], rec["result"]["timing"]
    else:
        figures, timing = _build(cfg, plan_lib.stage_dir(root, KIND, key) / "weights")
        stage = plan_lib.Stage(KIND, KIND, f"{cfg.student}, {cfg.steps} steps", {}, key=key)
        params = _params(cfg)
        rec = plan_lib.write_marker(root, stage, inputs={}, config=params,
                                    result={"figures": figures, "timing": timing},
                                    summary=_summary(figures), seconds=time.perf_counter() - t0)
    path = Path(rec["path"]) / "weights"
    out = None
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
            shutil.copyfile(path / name, out / name)
    return StudentPretrainResult(key, path, out, cached, figures, timing)


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    return {f"{who} {k}": v for who, fig in figures.items() if isinstance(fig, dict) for k, v in fig.items()}


def _build(cfg: StudentPretrainConfig, weights: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Render, pretrain, measure, save; returns (figures, timing)."""
    from mad_pipeline.progress import progress_bar
    from mad_pipeline.students import pretrain as P
    from mad_pipeline.students import pretrain_eval as E

    s = cfg.settings()
    t0 = time.perf_counter()
    with progress_bar("rendering scenes", cfg.pool_size + cfg.eval_size, unit="img", enabled=cfg.progress) as bar:
        pool = P.make_pool(s.seed, 0, s.pool_size, bar.advance)
        held_out = P.make_pool(s.seed, s.pool_size, cfg.eval_size, bar.advance) if cfg.eval_size else None
    t1 = time.perf_counter()
    phases = "image phase, then MLM, then MLM + ITM" if s.cell_steps else "MLM, then MLM + ITM"
    with progress_bar(f"pretraining ({phases})", s.cell_steps + s.steps, unit="step", enabled=cfg.progress) as bar:
        def tick(step: int, info: dict) -> None:
            bar.advance()
            bar.info(f"cell {info['cell']:.3f}" if info.get("phase") == "cell" else
                     f"mlm {info['mlm']:.3f}  itm {info['itm']:.3f}  hard {info['hard']:.2f}")

        model, everything = P.train(s, pool, tick)
    history = [h for h in everything if h.get("phase") != "cell"]
    cells = [h["cell"] for h in everything if h.get("phase") == "cell"]
    t2 = time.perf_counter()
    figures: dict[str, Any] = {}
    if held_out is not None:
        e = E.EvalSettings(probe_steps=cfg.probe_steps, probe_train=min(cfg.probe_train, s.pool_size))
        with progress_bar("from-scratch comparison", cfg.probe_steps, unit="step", enabled=cfg.progress) as bar:
            figures = E.compare(model, s, e, pool, held_out, lambda step, info: bar.advance())
    t3 = time.perf_counter()
    last = history[-min(len(history), 50):]
    final = {k: round(sum(h[k] for h in last) / len(last), 4) for k in last[-1]}
    timing = {"render_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "step_s": round((t2 - t1) / s.steps, 3),
              "eval_s": round(t3 - t2, 1)}
    meta = {"settings": P.settings_dict(s), "eval": {"held_out_scenes": cfg.eval_size, "probe_steps": cfg.probe_steps,
                                                     "probe_train": cfg.probe_train},
            "figures": figures, "final_train": final, "timing": timing,
            "curve": [{"step": i + 1, **{k: round(v, 4) for k, v in h.items()}}
                      for i, h in enumerate(history) if (i + 1) % max(1, s.steps // 50) == 0]}
    if cells:  # the image phase's probe loss, 50 points
        meta["cell_curve"] = [{"step": i + 1, "cell": round(v, 4)} for i, v in enumerate(cells)
                              if (i + 1) % max(1, len(cells) // 50) == 0]
    P.save(model, weights, meta, itm_pooler=s.itm_pooler)
    return figures, timing


__all__ = ["KIND", "StudentPretrainConfig", "StudentPretrainResult", "check", "run", "stage_key", "weights_key"]
