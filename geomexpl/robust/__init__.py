"""Training-time defences that lower the curvature of the level sets, and so the manipulability of
gradient explanations (issue 17).

Dombrowski, Anders, Müller, Kessel, "Towards robust explanations for deep neural networks"
(Pattern Recognition 2022) bound how far a gradient explanation can be manipulated by the
curvature of the network's level sets, and derive three defences from the bound, all offered by
:func:`finetune` / :func:`robust_pretrained`:

* ``weight_decay``: an L2 term on the weights (the bound grows with their norms);
* ``softplus``: smooth activations, softplus_beta in place of ReLU (strength = beta; the trained
  and returned model is the softplus twin, sharing the weights);
* ``hessian``: minimise the Frobenius norm of the input Hessian of the true-class logit,
  estimated stochastically (:func:`hessian_norm_penalty`, Hutchinson probes, exact double
  backward or finite differences of input gradients). Mustafa et al. 2020 ("Input Hessian
  regularization of neural networks") regularise the operator norm of the same Hessian.

and one related defence:

* ``alignment``: local gradient alignment of Joo et al. 2023 ("Towards more robust interpretation
  via local gradient alignment", AAAI): the l2 and/or cosine distance between the input gradients
  at x and at a random nearby x' (:func:`gradient_alignment_penalty`).

``plain`` fine-tunes with no regulariser (the baseline). See docs/robust.md.
"""
from geomexpl.robust.penalties import (ALIGNMENT_KINDS, HESSIAN_METHODS, gradient_alignment_penalty,
                                       hessian_norm_penalty, rademacher)
from geomexpl.robust.training import (DEFENCES, check_defence, finetune, penalty_function, robust_path,
                                      robust_pretrained, train_step)

__all__ = ["ALIGNMENT_KINDS", "DEFENCES", "HESSIAN_METHODS", "check_defence", "finetune",
           "gradient_alignment_penalty", "hessian_norm_penalty", "penalty_function", "rademacher", "robust_path",
           "robust_pretrained", "train_step"]
