"""Torch-free image data readers: one `load_data(spec)` for every source.

Training and serving both read through here so that an image means the same
uint8 NCHW array everywhere. Only numpy, pillow and the standard library are
imported; the digits ship inside the package (genrun/data), so no source
needs scikit-learn. One module per format:

  spec.py         `load_data(spec)`: the spec string -> a reader -> a DataSplit
  imagesets.py    ImageSet and DataSplit, and the seeded train/test split
  idx.py          MNIST's IDX files (gzipped or raw), read as a bounded stream
  download.py     the MNIST release, downloaded into a cache and checked by sha256
  image_files.py  PNG/JPEG files and folders of them (EXIF rotation, size limits)
  npz.py          .npz/.npy arrays, their headers checked before numpy allocates
  resize.py       the two resamplers: a folder's fit-and-crop, a split's resize
"""

from .idx import read_idx
from .image_files import MAX_IMAGE_PIXELS, read_image_files, read_named_folder
from .imagesets import TEST_FRACTION, DataSplit, ImageSet, split_indices
from .spec import DATA_SPECS_HELP, folder_of, load_data

__all__ = [
    "DATA_SPECS_HELP",
    "MAX_IMAGE_PIXELS",
    "TEST_FRACTION",
    "DataSplit",
    "ImageSet",
    "folder_of",
    "load_data",
    "read_idx",
    "read_image_files",
    "read_named_folder",
    "split_indices",
]
