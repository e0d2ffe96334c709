"""``mad run``'s library half: what a YAML key accepts, read from the settings dataclasses (:mod:`.schema`), reading
and validating a YAML (:mod:`.config`; read strictly, repeated keys refused: :mod:`.yaml_io`), the stage plan and the
stage outputs in the cache (:mod:`.plan`), each stage's key (:mod:`.resolve`) and the results table (:mod:`.report`).
The stages that do the work, and the schema with the stage settings, are :mod:`mad_pipeline.stages.pipeline` and
:mod:`mad_pipeline.stages.report`."""

from .config import PipelineConfig, load_config
from .plan import Stage, expand, stage_key
from .report import aggregate, write_report

__all__ = ["PipelineConfig", "Stage", "aggregate", "expand", "load_config", "stage_key", "write_report"]
