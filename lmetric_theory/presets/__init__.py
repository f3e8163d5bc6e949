"""Hardware/model presets for the simulator, as JSON files (see :mod:`lmetric_theory.sim.latency`).

- ``h100-llama3-8b``: roofline of a Llama-3-8B-shaped model on one H100 SXM 80GB;
- ``a100-llama3-8b``: the same model on one A100 SXM 80GB;
- ``h100-llama3-8b-calibrated``: coefficients fitted to measured H100 iteration times with
  ``lmetric-theory calibrate --attention`` (limits as the roofline preset).
"""
