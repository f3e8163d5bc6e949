"""Experiments layer: sweeps, tuning, counterfactual forks and decision regions."""
