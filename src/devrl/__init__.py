"""devrl: training, behaviour and estimator code for the developmental-interpretability RL companion."""

__version__ = "0.1.0"
