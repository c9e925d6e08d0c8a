"""jaxlenet: the MXNet/Gluon convolutional-network chapter, exact and fast, in JAX."""

__version__ = "0.1.0"
