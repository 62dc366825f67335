"""Tasks: what is learned and how it is scored (``[task] type``).

| type             | what                                                        |
|------------------|-------------------------------------------------------------|
| `classification` | an encoder + mean pooling + a linear head; accuracy, loss    |
| `causal_lm`      | instruction tuning of a causal LM; exact match, perplexity   |
| `lm`             | language-model pre-training on unlabelled text; perplexity   |
"""

from fedfm.tasks import causal_lm, classification, lm  # noqa: F401  (registration)
from fedfm.tasks.base import TASKS, Task
from fedfm.tasks.classification import ClassificationTask, TextClassifier

__all__ = ["TASKS", "ClassificationTask", "Task", "TextClassifier"]
