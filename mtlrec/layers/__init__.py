"""Keras layers of the model zoo, one concept per module."""

from mtlrec.layers.embedding import FeatureEmbedding
from mtlrec.layers.experts import MixtureOfExperts
from mtlrec.layers.extraction import CGCLayer
from mtlrec.layers.heads import FunnelProduct, Tower
from mtlrec.layers.mlp import MLP

__all__ = ["CGCLayer", "FeatureEmbedding", "FunnelProduct", "MLP", "MixtureOfExperts", "Tower"]
