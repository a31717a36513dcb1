"""Training and evaluation of the shipped models (`fracnode train` / `fracnode evaluate`)."""
