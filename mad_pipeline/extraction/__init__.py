"""Stage-1 machinery in the style of clip-retrieval's ``clip_inference``: ``reader`` (decode + preprocess in
DataLoader workers), ``mapper`` (teacher forward), ``writer`` (background shard assembly and zarr writes), and
``runner`` (wires them with bounded queues)."""
