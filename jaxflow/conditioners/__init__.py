"""Conditioners: networks mapping the conditioning input (and a context) to transformer params."""

from jaxflow.conditioners.cnn import ResidualBlock, ResNetCNN, resnet_cnn
from jaxflow.conditioners.dense import Dense
from jaxflow.conditioners.made import MADE, MaskedDense, made
from jaxflow.conditioners.mlp import MLP, Conditioner, from_linen, from_nnx, mlp

__all__ = [
    "MADE", "MLP", "Conditioner", "Dense", "MaskedDense", "ResNetCNN", "ResidualBlock", "from_linen", "from_nnx",
    "made", "mlp", "resnet_cnn",
]
