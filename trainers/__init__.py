"""Step-CoT training, evaluation and command-line tools (not shipped inside checkpoints)."""
