"""`opensora doctor`: environment checks and per-GPU memory predictions for the config's training stages."""
