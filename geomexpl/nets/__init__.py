"""Model zoo (plain torch), cached trained weights, and softplus_beta twins."""
from geomexpl.nets.softplus import (SoftplusTwin, UnsupportedActivationError, beta_schedule,
                                    check_activations, softplus_beta, softplus_twin, unwrap)
from geomexpl.nets.weights import WeightFileError, cache_dir, load_weights, metadata, pretrained, save_weights
from geomexpl.nets.torchvision_like import torchvision_like
from geomexpl.nets.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalized, with_normalization
from geomexpl.nets.zoo import ARCHS, build, vgg_of_depth

__all__ = ["ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "Normalized", "SoftplusTwin", "UnsupportedActivationError", "WeightFileError", "beta_schedule",
           "build", "cache_dir", "check_activations", "load_weights", "metadata", "pretrained",
           "save_weights", "softplus_beta", "softplus_twin", "torchvision_like", "unwrap", "vgg_of_depth",
           "with_normalization"]
