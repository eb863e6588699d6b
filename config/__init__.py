"""Configuration: typed models, loading and validation."""
