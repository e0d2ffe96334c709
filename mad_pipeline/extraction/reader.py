"""Decode and preprocess images in DataLoader worker processes; bad files come back as recorded errors.

An item's location is a file path, or a location that reads its own bytes (:mod:`mad_pipeline.data.sources`: a tar
member, a parquet cell) through handles each worker opens lazily for itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.images import MAX_PIXELS, ImageDecodeError, load_image
from ..data.sources import ImageLocation


class ImageRows(Dataset):
    """Items are (row, location): a file path, or an ``ImageLocation`` that reads its own bytes (a tar member, a
    parquet cell); yields (row, pixels, crop_box, error)."""

    def __init__(self, items: list[tuple[int, str]], preprocess: Callable, crop_box: Callable, image_size: int,
                 max_pixels: int = MAX_PIXELS):
        self.items = items
        self.preprocess = preprocess
        self.crop_box = crop_box
        self.image_size = image_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        row, path = self.items[i]
        try:
            image = (path.load(self.max_pixels) if isinstance(path, ImageLocation)
                     else load_image(path, self.max_pixels))
            box = np.asarray(self.crop_box(*image.size), np.float32)
            pixels = self.preprocess(image)
            return row, pixels, box, ""
        except ImageDecodeError as e:
            return row, torch.zeros(3, self.image_size, self.image_size), np.full(4, np.nan, np.float32), str(e)


def collate(batch):
    rows = np.asarray([b[0] for b in batch], np.int64)
    pixels = torch.stack([b[1] for b in batch])
    boxes = np.stack([b[2] for b in batch])
    errors = [b[3] for b in batch]
    return rows, pixels, boxes, errors
