"""Training: the step loop of one stage (loop.py), the engines behind a registry (engines/), the process group
(distributed.py), the launcher of multi-process jobs, precision, EMA, starting weights (init.py)."""
