"""Fine-tuning: the training loop, optimizer and schedule, EMA, checkpoints, DDP, logs and plots."""
