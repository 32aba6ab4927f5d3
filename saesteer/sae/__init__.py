"""Sparse autoencoders: the Top-k SAE and its trainer, SAELens/sparsify formats, metrics.

    from saesteer.sae import load_sae
    sae = load_sae("runs/sae_smollm2_L6")      # our / SAELens / sparsify folder
    z = sae.encode(h)                           # dense codes of raw residual activations
"""

from saesteer.sae.base import SAE, JumpReLUSAE, ReluSAE
from saesteer.sae.config import TrainConfig
from saesteer.sae.formats import load_sae, save_sae
from saesteer.sae.topk import TopKSAE

__all__ = ["SAE", "JumpReLUSAE", "ReluSAE", "TopKSAE", "TrainConfig", "load_sae", "save_sae"]
