"""The networks: the encoders, the CKM decoder (encoders.py) and the CPU convolution kernels
(conv.py). The names below are the ones the rest of the package uses."""

from ohc_jax.models.encoders import (ENCODERS, CKMDecoder, Conv1DEncoder, MLPEncoder, ResNet18,
                                     SimpEncoder, decoder_layers, make_encoder, preprocess)

__all__ = ['ENCODERS', 'CKMDecoder', 'Conv1DEncoder', 'MLPEncoder', 'ResNet18', 'SimpEncoder',
           'decoder_layers', 'make_encoder', 'preprocess']
