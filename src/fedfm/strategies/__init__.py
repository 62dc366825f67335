"""Strategies: the server's rule for a round — which clients, with what instructions, and how
their updates become the next global state. ``[strategy] name`` picks one.

| name         | rule                                                        | paper                    |
|--------------|-------------------------------------------------------------|--------------------------|
| `fedavg`     | example-weighted mean of client states                      | McMahan et al. 2017      |
| `fedprox`    | FedAvg + proximal term (mu/2)·‖w − w_global‖² on clients     | Li et al. 2020           |
| `fedavgm`    | FedAvg with server momentum                                 | Hsu et al. 2019          |
| `fedadam`    | server Adam on the averaged pseudo-gradient                 | Reddi et al. 2021        |
| `fedyogi`    | server Yogi                                                  | Reddi et al. 2021        |
| `fedadagrad` | server Adagrad                                               | Reddi et al. 2021        |
| `diloco`     | outer Nesterov SGD on the averaged pseudo-gradient (LM pre-training) | Douillard et al. 2023 |
| `lora_svd`   | LoRA: rank-r SVD of the mean product B·A; rest as FedAvg    | Bai et al. 2024 FlexLoRA |
| `median`     | coordinate-wise median of the deltas (robust)               | Yin et al. 2018          |
| `trimmed_mean` | coordinate-wise mean without the beta share at each end   | Yin et al. 2018          |
| `krum`       | the delta closest to its n − f − 2 nearest others           | Blanchard et al. 2017    |
| `multikrum`  | mean of the m deltas with the best Krum scores              | Blanchard et al. 2017    |
| `norm_bound` | FedAvg of the deltas clipped to L2 norm ≤ max_norm          | Sun et al. 2019          |
| `fltrust`    | deltas weighted by ReLU(cos) with the server's root update  | Cao et al. 2021          |
| `flame`      | HDBSCAN majority by cosine, clip to the median norm, noise  | Nguyen et al. 2022       |
| `foolsgold`  | deltas weighted down when clients' histories look alike     | Fung et al. 2020         |
| `fedbuff`    | asynchronous: every K arrivals, staleness-weighted mean delta | Nguyen et al. 2022     |

The robust rules (``median`` … ``fltrust``) are described in :mod:`fedfm.strategies.robust`, the
backdoor defences in :mod:`fedfm.strategies.flame` and :mod:`fedfm.strategies.foolsgold`.
"""

from fedfm.strategies import (  # noqa: F401  (registration)
    diloco,
    fedavg,
    fedbuff,
    fedopt,
    flame,
    foolsgold,
    lora_aggregation,
    robust,
)
from fedfm.strategies.base import STRATEGIES, Strategy

__all__ = ["STRATEGIES", "Strategy"]
