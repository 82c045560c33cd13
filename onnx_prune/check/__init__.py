"""Checking the written model: verification against the masked dense model, and the report."""
