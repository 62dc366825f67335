"""Privacy: client-level differential privacy with a real accountant, and secure aggregation."""
