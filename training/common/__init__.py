"""What every model's training shares: checkpoints that resume, evaluation metrics."""
