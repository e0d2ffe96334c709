"""Stage 2's library: training a student against the stage-1 stores.

- :mod:`.config`      :class:`TrainConfig`, the learning-rate schedule, device and worker choices
- :mod:`.dataset`     :class:`SampleDataset` / :class:`DistillDataset`: a split's samples and their store rows
- :mod:`.batch`       the typed records of the data path (:class:`Item`, :class:`Batch`)
- :mod:`.collate`     items -> a batch, with the objective's teacher targets (:class:`Collate`)
- :mod:`.sampler`     chunk-aware shuffling in resumable batches
- :mod:`.chunks`      decoded-chunk cache for row reads
- :mod:`.online`      the teacher run inside the loop (a check on the stores)
- :mod:`.trainer`     the loop (:class:`Trainer`)
- :mod:`.evaluate`    predictions and official scores through the task
- :mod:`.checkpoint`  exact-resume checkpoints
- :mod:`.rundir`      the run directory: locked while in use, claimed once the run has started
- :mod:`.plot`        the curves of a run
"""
