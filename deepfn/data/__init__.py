"""Datasets and input pipelines: loaders that never download behind the user's back,
a keyed batch iterator, length bucketing, pure, keyed image augmentations, and a character
vocabulary with next-token blocks for language models."""

from .augment import random_crop as random_crop
from .augment import random_flip as random_flip
from .batching import batches as batches
from .buckets import bucket_by_length as bucket_by_length
from .chars import CharVocab as CharVocab
from .cifar10 import cifar10 as cifar10
from .digits import digits as digits
from .multi30k import multi30k as multi30k
from .token_blocks import next_token_blocks as next_token_blocks

__all__ = ["CharVocab", "batches", "bucket_by_length", "cifar10", "digits", "multi30k", "next_token_blocks",
           "random_crop", "random_flip"]
