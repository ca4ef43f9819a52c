"""Data sets and their feeds: loading (memory or stream mode), the readers of array files, image
folders and tfds sets, the decode cache, and RealDisp."""
