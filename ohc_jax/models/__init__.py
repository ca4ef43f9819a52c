"""The networks: the encoders, the CKM decoder (encoders.py) and the CPU convolution kernels
(conv.py). The names below are the ones the rest of the package uses."""

from ohc_jax.models.conv import IMPLS as CONV_IMPLS
from ohc_jax.models.encoders import (COMPUTE_DTYPES, ENCODERS, CKMDecoder, Conv1DEncoder,
                                     MLPEncoder, ResNet18, SimpEncoder, decoder_layers,
                                     make_decoder, make_encoder, preprocess)

__all__ = ['COMPUTE_DTYPES', 'CONV_IMPLS', 'ENCODERS', 'CKMDecoder', 'Conv1DEncoder', 'MLPEncoder',
           'ResNet18', 'SimpEncoder', 'decoder_layers', 'make_decoder', 'make_encoder',
           'preprocess']
