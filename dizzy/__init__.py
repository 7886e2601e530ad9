"""dizzy: a peer-to-peer object sync daemon."""

__version__ = "0.1.0"
