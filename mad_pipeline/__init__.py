"""mad: offline teacher features and Multimodal Adaptive Distillation.

Library layout (imports only go down: ``mad_pipeline.cli`` -> ``mad_pipeline.stages`` -> the rest):

- ``mad_pipeline.data``        datasets (JSONL manifest, official benchmark readers), safe image decoding
- ``mad_pipeline.teachers``    the teacher registry and the frozen open_clip / transformers teachers
- ``mad_pipeline.store``       the Zarr feature-store format: layout, writer, reader, verification
- ``mad_pipeline.cache``       content-hash keys and the cache directory
- ``mad_pipeline.extraction``  the pipelined reader -> teacher -> writer runner used by stage 1
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
