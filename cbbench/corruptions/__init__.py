"""ImageNet-C corruptions: the reference adapter (imagecorruptions 1.1.2) and the batched torch engine."""


def corrupt(images, name, severity, generator=None, *, quantize=False):
    """Batched torch ImageNet-C corruption (see cbbench.corruptions.engine); imported lazily."""
    from cbbench.corruptions.engine import corrupt as _corrupt

    return _corrupt(images, name, severity, generator, quantize=quantize)
