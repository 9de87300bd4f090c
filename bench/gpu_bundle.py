"""Pack the project's offline CIFAR-10 sources small enough to send to a GPU machine, and unpack them there.

    python bench/gpu_bundle.py pack ../shared/data .devdata       # here: ~30 MB instead of 72 MiB
    python bench/gpu_bundle.py unpack .devdata /tmp/full.pack     # there (bench/gpu_cifar10.sh does it)

The shared folder's cifar10_src holds 60,000 JPEGs and the original pickles' first 3 MiB each
(orig_prefix). Two lossless cuts: the JPEGs of the 6,102 images whose original pixels are in
orig_prefix are never decoded, so they are dropped; and every other JPEG begins with the same
623-byte header (quantisation and Huffman tables, the 32x32 frame) and ends with the same 2-byte
marker, so those are stored once. orig_prefix is xz-compressed. unpack rebuilds the JPEG pack in
build_cifar10.py's format with the same bytes for every image it decodes; the shared folder's own
build_cifar10.py then writes the pickles and SHA256SUMS checks them.
"""
import lzma
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

TOOLS = ("build_cifar10.py", "cifar_trunc.py")


def write_pack(path: Path, magic: bytes, blobs: list[bytes]) -> None:
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("<u8")
    with open(path, "wb") as f:
        f.write(magic + struct.pack("<I", len(blobs)) + offsets.tobytes() + b"".join(blobs))


def pack(shared: Path, out: Path) -> None:
    sys.path.insert(0, str(shared / "tools"))
    from build_cifar10 import MAGIC, Pack, names_in_order
    from cifar_trunc import parse

    out.mkdir(parents=True, exist_ok=True)
    (out / "orig_prefix").mkdir(exist_ok=True)
    (out / "tools").mkdir(exist_ok=True)
    src = shared / "cifar10_src"
    jpegs, blobs, first = Pack(src / "cifar10_jpegs.pack"), [], 0
    for name, _, names in names_in_order(src / "orig_prefix"):
        exact = len(parse(src / "orig_prefix" / name)[2])
        blobs += [b"" if i < exact else jpegs.get(first + i) for i in range(len(names))]
        first += len(names)
        (out / "orig_prefix" / f"{name}.xz").write_bytes(
            lzma.compress((src / "orig_prefix" / name).read_bytes(), preset=9 | lzma.PRESET_EXTREME))
    head = next(b for b in blobs if b)[:623]
    if not all(b[:623] == head and b[-2:] == b"\xff\xd9" for b in blobs if b):
        sys.exit("the JPEGs do not share one 623-byte header: this cut does not apply to these files")
    write_pack(out / "jpeg_bodies.pack", MAGIC, [b[623:-2] for b in blobs])
    (out / "jpeg_head.bin").write_bytes(head)
    for name in TOOLS:
        shutil.copyfile(shared / "tools" / name, out / "tools" / name)
    shutil.copyfile(shared / "SHA256SUMS", out / "SHA256SUMS")
    shutil.copyfile(shared / "cifar-10-batches-py" / "batches.meta", out / "batches.meta")


def unpack(bundle: Path, full_pack: Path) -> None:
    sys.path.insert(0, str(bundle / "tools"))
    from build_cifar10 import MAGIC, Pack

    head, bodies = (bundle / "jpeg_head.bin").read_bytes(), Pack(bundle / "jpeg_bodies.pack")
    blobs = [bodies.get(i) for i in range(len(bodies.offs) - 1)]
    write_pack(full_pack, MAGIC, [head + b + b"\xff\xd9" if b else b"" for b in blobs])
    prefixes = full_pack.parent / "orig_prefix"
    prefixes.mkdir(exist_ok=True)
    for xz in (bundle / "orig_prefix").glob("*.xz"):
        (prefixes / xz.stem).write_bytes(lzma.decompress(xz.read_bytes()))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(Path(sys.argv[2]), Path(sys.argv[3]))
