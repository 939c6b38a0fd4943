"""dsd2: study and dodge sparse double descent in neural-network pruning."""

__version__ = "0.1.0"
