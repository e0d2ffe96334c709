"""The shapes world: a small, self-contained vision-language world shipped with mad, written in the official
VQA v2, SNLI-VE and VCR formats, with the tiny CLIP teacher ``shapes-clip`` trained on it: the whole pipeline
runs on it offline.

- :mod:`.world`     scenes (1-3 coloured shapes on a 3x3 grid, one grey box), sampling per seed, rendering
- :mod:`.language`  the phrases shared by questions, hypotheses, captions and prompts
- :mod:`.items`     VQA questions and SNLI-VE hypotheses per scene, with answer balancing
- :mod:`.vcr_items` VCR multiple-choice items per scene (question, answers, rationales)
- :mod:`.formats`   writers of the official VQA v2, SNLI-VE and VCR files (``mad datasets make shapes``)
- :mod:`.captions`  training texts for the ``shapes-clip`` teacher
- :mod:`.train`     the teacher's contrastive training loop (``mad teacher train-shapes``)
- :mod:`.zeroshot`  the teacher's zero-shot accuracy per question type (``mad teacher eval-shapes``)
"""

from .world import HELD_OUT_PAIRS, SPLITS

__all__ = ["HELD_OUT_PAIRS", "SPLITS"]
