"""AdvFT engine: data, models, victim training, adversarial fine-tuning, metrics, runs.

Plain PyTorch; nothing here imports a UI. Entry points:
    core.load_model(path)              any checkpoint the project writes
    core.advft.AdvFT                   the steppable engine (Algorithm 1)
    python -m core --help              the command line
"""

from .models import CheckpointError, load_model

__all__ = ["load_model", "CheckpointError"]
