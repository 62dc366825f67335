"""Codecs: transforms of the tensors on their way between server and client, chained into a
pipeline that ends in the wire format (safetensors bytes). ``[codec] up`` and ``down`` name them,
e.g. ``up = ["delta", "fp16"]``; an item is ``name`` or ``name:argument``.

| codec   | what it does                                              | lossless |
|---------|-----------------------------------------------------------|----------|
| `delta` | send w − reference (the state the receiver already holds) | yes      |
| `fp16`  | cast floating tensors to float16                          | no       |
| `bf16`  | cast floating tensors to bfloat16                         | no       |
"""

from fedfm.codecs import basic  # noqa: F401  (registration)
from fedfm.codecs.base import CODECS, Codec, CodecContext, Pipeline, parse_codec

__all__ = ["CODECS", "Codec", "CodecContext", "Pipeline", "parse_codec"]
