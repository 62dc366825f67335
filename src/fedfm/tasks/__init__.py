"""Tasks: what is learned and how it is scored."""

from fedfm.tasks.classification import ClassificationTask, TextClassifier

__all__ = ["ClassificationTask", "TextClassifier"]
