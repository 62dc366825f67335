"""The one exception hierarchy of fedfm.

::

    FedFMError                 anything fedfm raises on purpose
    ├── ConfigError            a config key, value or type is not allowed
    ├── DataError              a data file, column, label or split cannot be used
    ├── ModelError             a model cannot be found or loaded
    ├── ProtocolError          a payload or message is malformed, tampered or out of place
    │   └── StaleReference     a payload is coded against state this receiver does not hold
    ├── TrainingError          training diverged (NaN/inf loss) or cannot go on
    ├── ResumeError            a run directory cannot be resumed
    └── NetworkError           a peer cannot be reached, refuses us, or misses a deadline

The CLI turns each of them into one line on stderr and exit code 2; a traceback is shown only
with ``--debug``. Messages name the field, the value and what is allowed.
"""

from __future__ import annotations


class FedFMError(Exception):
    """Base class of every error fedfm raises on purpose."""


class ConfigError(FedFMError, ValueError):
    """A config key, value or type is not allowed."""


class DataError(FedFMError):
    """A data file, column, label or partition cannot be used."""


class ModelError(FedFMError):
    """A model cannot be found or loaded."""


class ProtocolError(FedFMError):
    """A payload or message is malformed, tampered with, or out of place."""


class StaleReference(ProtocolError):
    """A payload is coded against a round's state (delta, decoder memory) that this receiver does
    not hold, e.g. a client that missed rounds: it needs the full state (the sync blob) first."""


class TrainingError(FedFMError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class ResumeError(FedFMError):
    """A run directory cannot be resumed."""


class NetworkError(FedFMError):
    """A peer cannot be reached, refuses us (authentication), or misses a deadline."""
