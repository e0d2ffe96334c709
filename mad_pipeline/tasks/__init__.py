"""Tasks: everything that depends on which benchmark is trained or scored, one module per benchmark.

- :mod:`.base`      the :class:`Task` interface (label space, targets, texts, zero-shot candidates, loss,
                    predictions in the official results format, scoring)
- :mod:`.registry`  ``@register_task`` and :func:`get_task` (plugins included: :mod:`mad_pipeline.plugins`)
- :mod:`.vqa`       VQA v2: answer vocabulary (train split, min count 9), soft scores (10-choose-9), prompts
- :mod:`.snli_ve`   SNLI-VE: three labels, the hypothesis as the zero-shot text, a 1-D confidence calibration
- :mod:`.vcr`       VCR: four choices for Q->A and QA->R
- :mod:`.metrics`   the official metrics (VQA accuracy ported from the VQA API's ``vqaEval.py``)
"""

from __future__ import annotations

from . import snli_ve, vcr, vqa  # noqa: F401  (each registers its task)
from .base import ZS_FILL, Candidates, Task, ZeroShotSetup
from .registry import get_task, register_task, task_class, task_names

__all__ = ["ZS_FILL", "Candidates", "Task", "ZeroShotSetup", "get_task", "register_task", "task_class",
           "task_names"]
