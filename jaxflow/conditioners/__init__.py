"""Conditioners: networks mapping the conditioning input (and a context) to transformer params."""

from jaxflow.conditioners.mlp import MLP, Conditioner, from_linen, from_nnx, mlp

__all__ = ["MLP", "Conditioner", "from_linen", "from_nnx", "mlp"]
