"""Stylized toy models whose dynamics can be solved or simulated exactly (pure JAX, CPU-fast)."""
