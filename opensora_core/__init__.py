"""opensora-flow core: config, models, diffusion, encoders, data, training, evaluation, tracking."""

__version__ = "0.1.0"
