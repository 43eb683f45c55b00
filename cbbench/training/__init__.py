"""Training a baseline and its CB twin on ImageNet-scale data as one pair (``cbbench train --recipe``).

No public CB checkpoint exists, so cbbench trains the pair itself: one data stream
feeds both arms in lockstep, so the two models differ by Context Broadcasting alone.
One concept per module: ``recipe`` (recipes as YAML data), ``data`` (train tree,
seeded sample order and augmentation), ``arm`` (one model with its optimizer,
schedule and EMA), ``state`` (resumable checkpoints), ``card`` (model card and
logs), ``loop`` (the pair trainer). Importing this package imports no torch.
"""
