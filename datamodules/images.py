"""Images as the models see them, with numpy, PIL and torch only: decoding, resizing and the
normalisation, shared by training (the datamodules) and inference (`predict`, `export`,
zoo.transforms), which must not need Lightning. One copy of each step, so a prediction sees
exactly what training saw.

    x = image_to_uint8(Image.open("digit.png"), channels=1, size=(28, 28))   # uint8 (1, 28, 28)
    x = normalize(x[None], mean=[0.1307], std=[0.3081])                      # float32 (1, 1, 28, 28)
"""
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image(path: str | os.PathLike, channels: int, size: tuple[int, int]) -> Tensor:
    """One image file as uint8 (C, H, W): grayscale (C=1) or RGB (C=3), resized to size=(H, W).
    Raises OSError (or a PIL error, a subclass of it or ValueError) for a file PIL cannot read."""
    with Image.open(path) as im:
        return image_to_uint8(im, channels, size)


def image_to_uint8(im: Image.Image, channels: int, size: Sequence[int], interpolation: str = "bilinear") -> Tensor:
    """A PIL image as uint8 (C, H, W) by the rules images are trained with, for training (load_image)
    and for `predict` alike: the stored rotation applied, transparent pixels white, grayscale (C=1)
    or RGB (C=3), resized to size=(H, W) (bilinear with antialiasing, like torchvision's Resize)."""
    im = ImageOps.exif_transpose(im)  # phone photos: apply the stored rotation
    if im.mode.startswith("I") or im.mode == "F":  # 16-bit (or wider) grayscale: PIL's convert clips it at 255
        im = Image.fromarray(deep_to_uint8(np.asarray(im), im.mode))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)  # transparent means white, as a viewer shows it
    im = im.convert("L" if channels == 1 else "RGB")
    im = im.resize((size[1], size[0]), Image.Resampling[interpolation.upper()])  # (W, H) for PIL
    array = np.asarray(im, dtype=np.uint8).reshape(size[0], size[1], channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)


def deep_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit grayscale image scaled to 0..255 (65535 -> 255), where PIL's own conversion turns every
    value above 255 white. Mode I;16* is 16-bit (16-bit PNGs open so); mode I (32-bit integers, older
    Pillows' 16-bit PNGs) is read as 8-bit when no value passes 255 and as 16-bit up to 65535. Wider or
    float images have no fixed full scale, so they are refused rather than guessed at."""
    low, high = (array.min(), array.max()) if array.size and mode != "F" else (-1, -1)  # one pass each
    if mode == "I" and 0 <= low and high <= 255:
        return array.astype(np.uint8)
    if 0 <= low and high <= 65535:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    kind = "floating-point" if mode == "F" else "32-bit integer"
    raise ValueError(f"a {kind} grayscale image (PIL mode {mode}) has no fixed scale to 0..255; save it as an "
                     f"8- or 16-bit PNG")


def list_images(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files with these extensions under `folder` (recursively, hidden ones left out), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def normalize(x: Tensor, mean: Tensor | Sequence[float], std: Tensor | Sequence[float]) -> Tensor:
    """uint8 images (B, C, H, W) -> float32, scaled to 0..1 and standardised per channel with the
    training split's mean and std. Float inputs (flat features) pass through unchanged."""
    if x.dtype != torch.uint8:
        return x
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    # x.div(255) converts and divides in one pass, bitwise x.float().div_(255); but it gives the default
    # dtype, which Lightning's 64-true sets to float64 around each step, where the model casts float32 inputs.
    x = x.div(255) if torch.get_default_dtype() == torch.float32 else x.float().div_(255)
    return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
