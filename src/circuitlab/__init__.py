"""circuitlab: chain-of-thought transformers, SAE circuit discovery and analog-design LMs."""

__version__ = "0.1.0"
