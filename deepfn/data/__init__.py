"""Datasets and input pipelines: loaders that never download behind the user's back,
a keyed batch iterator, length bucketing and pure, keyed image augmentations."""

from .augment import random_crop as random_crop
from .augment import random_flip as random_flip
from .batching import batches as batches
from .buckets import bucket_by_length as bucket_by_length
from .cifar10 import cifar10 as cifar10
from .digits import digits as digits
from .multi30k import multi30k as multi30k

__all__ = ["batches", "bucket_by_length", "cifar10", "digits", "multi30k", "random_crop", "random_flip"]
