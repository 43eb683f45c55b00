"""Adversarial attacks in pixel space (inputs in [0, 1], models normalize inside)."""
