"""The file format: the .aec container and its entropy-coded streams (docs/format.md)."""
