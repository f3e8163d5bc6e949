"""I/O layer: strict JSON, atomic writes and the HTML report."""
