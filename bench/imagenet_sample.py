"""Where the bench scripts find the 1000 real ImageNet sample JPEGs: ../shared on these machines,
.gpu-data/ on the offline GPU machine (shared/tools/gpu-prepare.sh copies the sample there)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = (ROOT.parent / "shared" / "datasets" / "imagenet-sample", ROOT / ".gpu-data" / "imagenet-sample")
#: The first of SAMPLES that exists (else the first, for messages that name it).
SAMPLE = next((s for s in SAMPLES if s.is_dir()), SAMPLES[0])
