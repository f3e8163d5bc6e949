"""Hardware/model presets for the simulator, as JSON files (see :mod:`lmetric_theory.sim.latency`).

- ``h100-llama3-8b``: roofline of a Llama-3-8B-shaped model on one H100 SXM 80GB;
- ``a100-llama3-8b``: the same model on one A100 SXM 80GB;
- ``h100-llama3-8b-calibrated``: coefficients fitted to measured H100 iteration times with
  ``lmetric-theory calibrate --attention`` (limits as the roofline preset).
- ``h200-qwen2.5-7b``: roofline of a Qwen2.5-7B-shaped model on one H200 141GB (the paper's model);
- ``h200-qwen2.5-7b-calibrated``: fitted to measured H200 iterations of that shape
  (``calibration/`` in the repository: the data, the script and the fit quality).
"""
