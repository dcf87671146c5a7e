"""geomexpl: the geometry of explanation manipulation for PyTorch networks.

Submodules: ``data`` (offline datasets and value bounds), ``nets`` (model zoo, softplus twins),
``explain`` (differentiable explanation methods), ``attack`` (manipulation engine), ``geometry``
(curvature and geodesics), ``metrics``, ``sanity`` (Sixt et al.'s checks) and ``plot``.
"""
__version__ = "0.1.0"
