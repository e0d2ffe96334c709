"""Stage-2 building blocks: store-backed datasets with chunk-aware shuffling (more to come: the trainer)."""
