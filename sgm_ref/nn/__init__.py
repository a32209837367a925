"""The score network: an MLP with hand-written backpropagation over a flat parameter vector."""

from .embedding import TimeEmbedding
from .mlp import MLP

__all__ = ["MLP", "TimeEmbedding"]
