"""ImageNet-C corruptions."""
