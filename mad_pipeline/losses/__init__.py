"""The MAD objective: this project's own formulation of the paper's adaptive distillation (see docs/method.md).

- :mod:`.align`    token alignment: teacher patches at student patch centres, text by character-span overlap
- :mod:`.selection` token selection policies (a registry: a new policy is one function)
- :mod:`.targets`  :class:`TokenTargets`, :class:`TargetBuilder` (the one place
                   where a batch's teacher targets are made)
- :mod:`.terms`    token / pooled losses, confidence weighting, logit KD, the alpha schedules, the calibration
- :mod:`.config`   :class:`MADConfig`, its presets and :meth:`MADConfig.from_switches`
- :mod:`.mad`      :class:`MADLoss`, which reads the teacher only through :class:`DistillTargets`

Pure torch, no I/O.
"""

from .align import align_patches, align_text, patch_centers
from .config import PRESETS, SWITCHES, MADConfig
from .mad import MADLoss, StudentBatch
from .selection import SELECTION_POLICIES, parse_top_k, register_policy, select_tokens
from .targets import (
    DistillTargets,
    TargetBuilder,
    TeacherBatch,
    TokenTargets,
    build_targets,
    image_targets,
    text_reference,
    text_targets,
)
from .terms import (
    ALPHA_SCHEDULES,
    CONFIDENCE_MODES,
    TOKEN_LOSSES,
    Calibration,
    alpha,
    confidence_weights,
    fit_calibration,
    logit_kd,
    pooled_loss,
    token_loss,
)

__all__ = [
    "ALPHA_SCHEDULES", "CONFIDENCE_MODES", "PRESETS", "SELECTION_POLICIES", "SWITCHES", "TOKEN_LOSSES", "Calibration",
    "DistillTargets", "MADConfig", "MADLoss", "StudentBatch", "TargetBuilder", "TeacherBatch", "TokenTargets",
    "align_patches", "align_text", "alpha", "build_targets", "confidence_weights", "fit_calibration", "image_targets",
    "logit_kd", "parse_top_k", "patch_centers", "pooled_loss", "register_policy", "select_tokens", "text_reference",
    "text_targets", "token_loss",
]
