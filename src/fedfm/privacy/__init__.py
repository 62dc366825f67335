"""Privacy: client-level differential privacy with a real accountant, and secure aggregation.

``privacy.dp`` names one of :data:`~fedfm.privacy.mechanisms.DP_MECHANISMS`.
"""

from fedfm.privacy.mechanisms import DP_MECHANISMS, DPMechanism, mechanism

__all__ = ["DP_MECHANISMS", "DPMechanism", "mechanism"]
