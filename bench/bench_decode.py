"""How far device decoding (--decode gpu) and the device JPEG round trip are from the PIL path, in pixels.

    python bench/bench_decode.py [--n 1000] [--out FILE]

On the ImageNet sample (real JPEGs), on THIS machine's CPU: torchvision's decode_jpeg
(libjpeg) + its tensor Resize/CenterCrop, as data/device_decode.py runs them, against
PIL's decode + the same transform on PIL images (the default path); and torchvision's
encode_jpeg/decode_jpeg quality-85 round trip against PIL's (make_c.jpeg_roundtrip).
A GPU runs nvjpeg and CUDA resize kernels instead: those differences are NOT measured here.
Differences are in [0, 1] units (1/255 = 0.0039 is one grey level), over all pixels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "datasets" / "imagenet-sample"


def stats(diffs: list[torch.Tensor]) -> str:
    d = torch.cat([x.flatten() for x in diffs])
    return (f"mean {d.mean():.5f}, max {d.max():.4f} ({round(float(d.max()) * 255)}/255), "
            f"{100 * float((d > 0).float().mean()):.1f}% of values differ")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sample", default=str(SAMPLE))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from torchvision import transforms

    from cbbench.data import classes
    from cbbench.data.device_decode import DeviceDecoder, pil_decode
    from cbbench.data.folders import load_rgb, scan_image_folders
    from cbbench.data.make_c import imagenet_c_crop, jpeg_roundtrip

    ds = scan_image_folders(Path(a.sample), classes.wnid_to_index(), name="sample", num_classes=1000,
                            ignore_unknown=True)
    paths = ds.paths[: a.n]
    deit = transforms.Compose([transforms.Resize(248, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(224), transforms.ToTensor()])
    rows = {"decode only (no resize)": [], "DeiT eval transform (bicubic 248, crop 224)": [],
            "ImageNet-C crop (bilinear 256, crop 224)": [], "JPEG quality-85 round trip of the ImageNet-C crop": []}
    fallbacks = 0
    for path in paths:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        pil = load_rgb(path)
        for name, tf in (("DeiT eval transform (bicubic 248, crop 224)", deit),
                         ("ImageNet-C crop (bilinear 256, crop 224)", imagenet_c_crop())):
            decoder = DeviceDecoder(tf, torch.device("cpu"))
            x, _, _, _ = decoder(([data], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), []))
            fallbacks += len(decoder.fallbacks)
            rows[name].append((x[0] - tf(pil)).abs())
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            raw = decode_jpeg(data, mode=ImageReadMode.RGB)
            rows["decode only (no resize)"].append((raw.float() - pil_decode(data).float()).abs() / 255)
        except RuntimeError:
            pass
        crop = imagenet_c_crop()(pil)[None]
        rows["JPEG quality-85 round trip of the ImageNet-C crop"].append(
            (jpeg_roundtrip(crop, on_device=True) - jpeg_roundtrip(crop)).abs())
    lines = [f"On {len(paths)} sample images ({a.sample}), CPU (torchvision {__import__('torchvision').__version__}, "
             f"Pillow {__import__('PIL').__version__}); command `python bench/bench_decode.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`:", ""]
    lines += [f"- {name}: {stats(d)} ({len(d)} images)" for name, d in rows.items()]
    lines += [f"- files torchvision's CPU decoder refused (PIL fallback): {fallbacks // 2}", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
