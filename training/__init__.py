"""Training and evaluation of the shipped models: outside the runtime package (the [train] extra)."""
