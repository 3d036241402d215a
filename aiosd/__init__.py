"""aiosd: an operating system for LLM agents (after the AIOS paper), as real processes."""

__version__ = "0.1.0"
