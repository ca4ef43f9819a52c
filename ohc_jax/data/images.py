"""How tfds stores images and the one resize of both modes: a leaf module, so that the readers
(readers.py), the tfds decoder (tfds_cache.py) and the stream readers import it without importing
each other."""

from typing import Optional

import numpy as np


def image_encoding(feature) -> Optional[str]:
  """How a tfds feature stores images: 'encoded' (an Image: PNG, JPEG), 'raw' (a (H, W, C) uint8
  Tensor of raw bytes, as launch/to_array_record.py --encoding=raw writes: read without decoding),
  or None (not an image)."""
  import tensorflow_datasets as tfds
  if isinstance(feature, tfds.features.Image):
    return 'encoded'
  if (isinstance(feature, tfds.features.Tensor) and feature.np_dtype == np.uint8 and
      len(feature.shape) == 3 and None not in feature.shape):
    return 'raw'
  return None


def resize_crop(image: np.ndarray, size: int) -> np.ndarray:
  """A (H, W, C) uint8 image's shorter side resized to `size` (OpenCV: area averaging when
  shrinking, bilinear when enlarging), then its central size x size crop: google/flax's
  examples/imagenet evaluation crop without its margin. Memory mode (in tfds_cache's child) and
  stream mode (on host threads) both resize with it, so both give the same pixels."""
  import cv2
  height, width = image.shape[:2]
  scale = size / min(height, width)
  scaled = max(size, round(height * scale)), max(size, round(width * scale))
  if scaled != (height, width):
    image = cv2.resize(image, scaled[::-1], interpolation=cv2.INTER_AREA if scale < 1 else
                       cv2.INTER_LINEAR).reshape(scaled + image.shape[2:])  # Keeps C = 1.
  top, left = (scaled[0] - size) // 2, (scaled[1] - size) // 2
  return np.ascontiguousarray(image[top:top + size, left:left + size])
