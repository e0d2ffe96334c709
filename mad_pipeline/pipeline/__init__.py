"""``mad run``'s library half: the YAML schema (:mod:`.config`), the stage plan and its keys (:mod:`.plan`), and the
results table (:mod:`.report`). The stages that do the work are :mod:`mad_pipeline.stages.pipeline` and
:mod:`mad_pipeline.stages.report`."""

from .config import PipelineConfig, load_config
from .plan import Stage, expand, stage_key
from .report import aggregate, write_report

__all__ = ["PipelineConfig", "Stage", "aggregate", "expand", "load_config", "stage_key", "write_report"]
