"""Stores: sessions (JSON files), images (PNG files), objects (tensors between nodes)."""
