"""Sanity checks of explanation methods (Sixt et al. 2020; Adebayo et al. 2018).

* :func:`cosine_similarity_convergence`: the CSC, do random relevance vectors injected at a layer
  align as the method propagates them down (a rank-one matrix chain)?
* :func:`parameter_randomisation` (cascading / independent) and :func:`random_logit`: do the maps
  change when the model's weights or the explained class change?
* :func:`matrix_chain_convergence`: Appendix B's simulation of random matrix chains (Fig. 7).
"""
from geomexpl.sanity.convergence import (ConvergenceResult, LayerConvergence, cosine_similarity_convergence,
                                         csc_methods, one_minus_abs_cosine, random_baseline_median)
from geomexpl.sanity.matrix_chain import (KINDS, ChainConvergence, LogDecayFit, fit_log_decay,
                                          matrix_chain_convergence)
from geomexpl.sanity.randomisation import (ORDERS, RandomisationResult, RandomLogitResult, parameter_randomisation,
                                           random_logit)

__all__ = ["KINDS", "ORDERS", "ChainConvergence", "ConvergenceResult", "LayerConvergence", "LogDecayFit",
           "RandomLogitResult", "RandomisationResult", "cosine_similarity_convergence", "csc_methods",
           "fit_log_decay",
           "matrix_chain_convergence", "one_minus_abs_cosine", "parameter_randomisation", "random_baseline_median",
           "random_logit"]
