"""Feature stores (format v1): layout, resumable writer with atomic publication, reader."""

from .layout import FORMAT_VERSION, ArraySpec, image_arrays, text_arrays
from .location import is_complete
from .reader import FeatureStore, open_store
from .writer import StoreWriter

__all__ = ["FORMAT_VERSION", "ArraySpec", "FeatureStore", "StoreWriter", "image_arrays", "is_complete",
           "open_store", "text_arrays"]
