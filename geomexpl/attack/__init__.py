"""The explanation-manipulation attack (paper sec. 2.2), its presets, target maps and the Ghorbani baseline."""
from geomexpl.attack.engine import AttackConfig, AttackResult, manipulate
from geomexpl.attack.ghorbani import ghorbani_attack
from geomexpl.attack.presets import PIXEL_STD, RATE_CONVENTIONS, SMOOTHING_BETA, Preset, loss_weights, preset
from geomexpl.attack.targets import explanation_target, mask_target, text_target

__all__ = ["AttackConfig", "AttackResult", "PIXEL_STD", "Preset", "RATE_CONVENTIONS", "SMOOTHING_BETA",
           "explanation_target", "ghorbani_attack",
           "loss_weights", "manipulate", "mask_target", "preset", "text_target"]
