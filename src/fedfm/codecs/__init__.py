"""Codecs: transforms of the tensors on their way between server and client, chained into a
pipeline that ends in the wire format (safetensors bytes). ``[codec] up`` and ``down`` name them,
e.g. ``up = ["delta", "topk:0.05", "int8"]``; an item is ``name`` or ``name:argument``.

| codec      | argument                                     | lossless | what it sends                                                          |
|------------|----------------------------------------------|----------|------------------------------------------------------------------------|
| `delta`    | —                                            | yes¹     | w − reference (the state the receiver already holds)                   |
| `residual` | —                                            | yes¹     | w − (reference + this peer's last reconstructed delta); an int64 count |
| `fp16`     | —                                            | no       | floating tensors as float16                                            |
| `bf16`     | —                                            | no       | floating tensors as bfloat16                                           |
| `int8`     | `block=N`, `stochastic`, `scale=fp32|fp16|bf16` (comma-separated) | no | int8 per value + a scale per tensor (or per N values), float32 by default |
| `int4`     | as `int8`                                    | no       | 4 bits per value, two per byte + scales as for int8                    |
| `topk`     | `F` in (0, 1], then `feedback`/`no_feedback` | no       | the k = round(F·n) largest-magnitude values + their int32 indices      |
| `randk`    | `F` in (0, 1], then `feedback`/`no_feedback` | no       | k = round(F·n) values at seeded random positions, unscaled; no indices |
| `lora_trim`| —                                            | yes      | each LoRA pair at its kept rank k: A[:k], B[:, :k]; k in the header    |
| `zlib`     | level 1 … 9 (default 9)                      | yes      | DEFLATE of every tensor's bytes as one blob, no tensor names; put last |

¹ exact up to one floating-point rounding.

- Quantisers are symmetric (q·s, s = max|x|/127 or /7, zero stays zero); rounding to nearest
  errs by ≤ s/2, ``stochastic`` rounding is unbiased (``codecs/quantize.py``).
- ``topk`` and ``randk`` send at least one value of each floating tensor. They keep what they
  did not send in the sender's codec memory and add it to the next message (error feedback,
  ``codecs/sparsify.py``): on by default, off by default in ``codec.down``, where ``delta``
  already re-sends what clients lack.
- ``lora_trim`` drops the all-zero trailing rows of A and columns of B that a lower-rank client
  (``method.client_ranks``) leaves. Put it first: it trims full states, and after ``delta`` or
  ``residual`` there is nothing to trim (``codecs/lora_trim.py``).
- ``delta`` and ``residual`` code against the receiver's state, so they come first; each codec
  appears once in a pipeline. Non-floating tensors pass through every codec unchanged.
- ``zlib`` entropy-codes what the codecs before it produced (after ``int4``: about 3.5 bits a
  value) and takes the tensor names off the wire; it comes last (``codecs/entropy.py``).
- Codecs add side tensors named ``<tensor>#scale``, ``<tensor>#idx``, ``#residual.step``; they
  are in the payload, so the bytes reported count them.
"""

from fedfm.codecs import (  # noqa: F401  (registration)
    basic,
    entropy,
    lora_trim,
    quantize,
    residual,
    sparsify,
)
from fedfm.codecs.base import CODECS, Codec, CodecContext, Pipeline, parse_codec, peer_seed

__all__ = ["CODECS", "Codec", "CodecContext", "Pipeline", "parse_codec", "peer_seed"]
