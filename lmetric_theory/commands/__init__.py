"""Sub-commands of the ``lmetric-theory`` CLI (I/O layer; one module per command)."""
