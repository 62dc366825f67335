"""Methods: how the foundation model is adapted, i.e. which tensors are trainable and shared.

| name      | what trains and travels                                   | built on            |
|-----------|-----------------------------------------------------------|---------------------|
| `lora`    | low-rank A·B beside the target linear layers, + task head | peft LoRA           |
| `prompt`  | soft prompt: `num_virtual_tokens` input embeddings, + head| peft prompt tuning  |
| `adapter` | IA3 rescaling vectors in attention and feed-forward, + head| peft IA3           |
| `head`    | the task head only (the encoder stays frozen)              | —                  |
| `full`    | every parameter of the encoder, + head                     | —                  |
"""

from fedfm.methods import adapter, full, head, lora, prompt  # noqa: F401  (registration)
from fedfm.methods.base import METHODS, Method

__all__ = ["METHODS", "Method"]
