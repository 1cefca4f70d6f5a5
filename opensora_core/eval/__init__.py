"""Evaluation: metrics read back from pixels (metrics), held-out diffusion loss (heldout), sampling (sample),
the evaluate stage (evaluate) and the comparison report (report)."""
