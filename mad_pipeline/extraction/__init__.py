"""Stage-1 machinery, in the style of clip-retrieval's ``clip_inference``:

- :mod:`.inputs`   content hashes of a dataset's images and texts (the rows of the stores)
- :mod:`.reader`   decode + preprocess in DataLoader workers
- :mod:`.runner`   the teacher forward, with decode and writing overlapped through bounded queues
- :mod:`.writer`   background shard assembly and zarr writes (a pool of writer threads on a GPU)
- :mod:`.device`   the GPU fast path: pinned memory, copies on side streams, decode/writer pools, ``auto`` batch size
- :mod:`.build`    get-or-build one store by key: cache lookup, lock, resumable partial build, atomic publication
- :mod:`.stores`   the image, text, index and zero-shot stores of a dataset
- :mod:`.zeroshot` the teacher's zero-shot logits and its official-format predictions
- :mod:`.distributed` the same on dask.distributed: one task per shard, the teacher built once per worker
- :mod:`.cluster` the local (``--workers``) or existing (``--scheduler``) dask cluster
- :mod:`.geometry` a store's geometry read off a teacher
"""
