"""Pedestrian attribute recognition: part-based and mask-attention networks, weighted losses,
metrics and per-track aggregation. Import the submodules directly (no import-time side effects)."""
