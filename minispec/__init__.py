"""minispec: one declarative spec → a versioned Minitron-style LLM compression pipeline."""

__version__ = "0.1.0"
