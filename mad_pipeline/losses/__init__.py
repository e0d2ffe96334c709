"""The MAD objective (SPEC section 5): this project's own formulation of the paper's adaptive distillation.

See :mod:`mad_pipeline.losses.mad` for the formulation and :mod:`mad_pipeline.losses.align` for token alignment.
Pure torch, no I/O; imports nothing from stages or cli.
"""

from .align import align_patches, align_text, patch_centers
from .mad import (
    ALPHA_SCHEDULES,
    CONFIDENCE_MODES,
    PRECOMPUTABLE_POLICIES,
    SELECTION_POLICIES,
    TOKEN_LOSSES,
    Calibration,
    MADConfig,
    MADLoss,
    StudentBatch,
    TeacherBatch,
    TokenTargets,
    alpha,
    confidence_weights,
    fit_calibration,
    image_targets,
    logit_kd,
    parse_top_k,
    pooled_loss,
    select_tokens,
    text_reference,
    text_targets,
    token_loss,
)

__all__ = [
    "ALPHA_SCHEDULES",
    "CONFIDENCE_MODES",
    "SELECTION_POLICIES",
    "TOKEN_LOSSES",
    "Calibration",
    "MADConfig",
    "MADLoss",
    "PRECOMPUTABLE_POLICIES",
    "StudentBatch",
    "TeacherBatch",
    "TokenTargets",
    "align_patches",
    "align_text",
    "alpha",
    "confidence_weights",
    "fit_calibration",
    "image_targets",
    "logit_kd",
    "parse_top_k",
    "patch_centers",
    "pooled_loss",
    "select_tokens",
    "text_reference",
    "text_targets",
    "token_loss",
]
