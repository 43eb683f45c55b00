"""How far device decoding (--decode gpu) and the device JPEG round trip are from the PIL path, in pixels.

    python bench/bench_decode.py [--n 1000] [--device cpu|cuda] [--out FILE]

On the ImageNet sample (real JPEGs), on --device: torchvision's decode_jpeg (libjpeg on a
CPU, nvjpeg on a GPU) + its tensor Resize/CenterCrop, as data/device_decode.py runs them,
against PIL's decode + the same transform on PIL images (the default path); and
torchvision's encode_jpeg/decode_jpeg quality-85 round trip on --device against PIL's
(make_c.jpeg_roundtrip). Differences are in [0, 1] units (1/255 = 0.0039 is one grey
level), over all pixels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from imagenet_sample import SAMPLE


def stats(diffs: list[torch.Tensor]) -> str:
    d = torch.cat([x.flatten() for x in diffs])
    return (f"mean {d.mean():.5f}, max {d.max():.4f} ({round(float(d.max()) * 255)}/255), "
            f"{100 * float((d > 0).float().mean()):.1f}% of values differ")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sample", default=str(SAMPLE))
    ap.add_argument("--device", default="cpu", help="where torchvision decodes, resizes and round-trips")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
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
            decoder = DeviceDecoder(tf, device)
            x, _, _, _ = decoder(([data], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), []))
            fallbacks += len(decoder.fallbacks)
            rows[name].append((x[0].cpu() - tf(pil)).abs())
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            raw = decode_jpeg(data, mode=ImageReadMode.RGB, device=device).cpu()
            rows["decode only (no resize)"].append((raw.float() - pil_decode(data).float()).abs() / 255)
        except RuntimeError:
            pass
        crop = imagenet_c_crop()(pil)[None]
        rows["JPEG quality-85 round trip of the ImageNet-C crop"].append(
            (jpeg_roundtrip(crop.to(device), on_device=True).cpu() - jpeg_roundtrip(crop)).abs())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"On {len(paths)} sample images ({a.sample}), {where} (torchvision {__import__('torchvision').__version__}, "
             f"Pillow {__import__('PIL').__version__}); command `python bench/bench_decode.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`:", ""]
    lines += [f"- {name}: {stats(d)} ({len(d)} images)" for name, d in rows.items()]
    lines += [f"- files torchvision's {where} decoder refused (PIL fallback): {fallbacks // 2}", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
