"""The compression spec: models, loading with positions, linting."""
