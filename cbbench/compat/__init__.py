"""Compatibility layers for third-party packages that do not install or import cleanly."""
