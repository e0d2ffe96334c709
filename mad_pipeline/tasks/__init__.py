"""Task definitions for the three benchmarks: label spaces, zero-shot candidate texts, official metrics.

- :mod:`.vqa`      answer vocabulary (train split, min count 9), soft scores (10-choose-9), prompts per answer
- :mod:`.snli_ve`  three labels; the hypothesis is the candidate text
- :mod:`.vcr`      four choices for Q->A and QA->R
- :mod:`.metrics`  the official metrics (VQA accuracy ported from the VQA API's ``vqaEval.py``)
"""

from __future__ import annotations

TASKS = ("vqa", "snli-ve", "vcr")

__all__ = ["TASKS"]
