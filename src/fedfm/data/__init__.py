"""Data: reading tables, tokenising once (cached), partitioning over clients, batching."""

from fedfm.data.partition import PARTITIONERS, Partition, partition
from fedfm.data.table import LabelledText, load_labelled_text, read_table

__all__ = [
    "PARTITIONERS",
    "LabelledText",
    "Partition",
    "load_labelled_text",
    "partition",
    "read_table",
]
