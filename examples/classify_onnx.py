"""Classify images with an edgenas ONNX bundle using only onnxruntime and numpy (no torch, no edgenas).

This is what a deployment does: read ``manifest.json`` to learn how the model wants its input, turn raw
uint8 pixels into that input, run ``model.onnx`` (or ``model.int8.onnx``) and read ``logits``. Its
accuracy should equal the ``accuracy.onnx`` figure of the manifest; if it does not, the manifest does
not describe the model.

    python examples/classify_onnx.py export/my-model                       # Fashion-MNIST test set
    python examples/classify_onnx.py export/my-model --data-dir DIR        # IDX files elsewhere
    python examples/classify_onnx.py export/my-model --npz test.npz        # x: uint8 images, y: labels
    python examples/classify_onnx.py export/my-model --int8 --json

Preprocessing, as the manifest's ``input`` says: ``x = pixel / 255``, then ``(x - mean) / std`` per
channel, then (only if the images are not the model's size) an antialiased bilinear resize, the one
edgenas trains with (torch's ``interpolate(..., mode="bilinear", antialias=True, align_corners=False)``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes: magic 0x0000080N, N big-endian sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise SystemExit(f"{path} is not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SystemExit(f"{path} is truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) and integer labels, from --npz or the IDX test files."""
    if args.npz:
        with np.load(args.npz, allow_pickle=False) as archive:
            x, y = archive["x"], archive["y"]
    else:
        directory = Path(args.data_dir)
        x, y = read_idx(directory / IMAGES), read_idx(directory / LABELS)
    if x.dtype != np.uint8:
        raise SystemExit(f"images must be uint8 (0..255), not {x.dtype}")
    if x.ndim == 3:  # N, H, W
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):  # N, H, W, C
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or len(y) != len(x):
        raise SystemExit(f"need N images and N labels, got images {x.shape} and labels {np.shape(y)}")
    return np.ascontiguousarray(x), np.asarray(y).astype(np.int64)


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased bilinear resize, as torch computes them.

    Each output pixel's centre maps to ``scale * (i + 0.5)`` in the input; a triangle filter whose
    width grows with ``scale`` when shrinking (so every input pixel contributes) weights its
    neighbours, and the weights are normalised to sum to 1. For enlarging this is plain bilinear.
    """
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        total = w.sum()
        weights[i, lo:hi] = w / total if total > 0 else w
    return weights.astype(np.float32)


def preprocess(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 N,C,H,W -> float32 model input, exactly as the manifest's ``input`` section says."""
    _, channels, height, width = spec["shape"]
    if images.shape[1] != channels:
        raise SystemExit(f"images have {images.shape[1]} channels, the model takes {channels}")
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    x = images.astype(np.float32) / np.float32(1.0 / spec["scale"])
    x = (x - mean) / std
    if x.shape[2:] != (height, width):
        rows, cols = resize_weights(x.shape[2], height), resize_weights(x.shape[3], width)
        x = np.einsum("hH,ncHw->nchw", rows, np.einsum("wW,ncHW->ncHw", cols, x)).astype(np.float32)
    return np.ascontiguousarray(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle directory written by `edgenas export`")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"directory with {IMAGES} and {LABELS}")
    parser.add_argument("--npz", default=None, help="npz file with 'x' (uint8 images) and 'y' (labels) instead")
    parser.add_argument("--int8", action="store_true", help="run model.int8.onnx instead of model.onnx")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    spec, out = manifest["input"], manifest["output"]
    model = bundle / ("model.int8.onnx" if args.int8 else "model.onnx")
    if not model.is_file():
        raise SystemExit(f"{bundle} has no {model.name}" + (" (exported with --no-int8?)" if args.int8 else ""))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    images, labels = load_images(args)

    correct = 0
    for start in range(0, len(labels), args.batch_size):
        x = preprocess(images[start:start + args.batch_size], spec)
        logits = sess.run([out["name"]], {spec["name"]: x})[0]
        correct += int((logits.argmax(1) == labels[start:start + args.batch_size]).sum())
    count = len(labels)
    accuracy = correct / count if count else float("nan")
    if args.json:
        print(json.dumps({"model": str(model), "accuracy": accuracy, "correct": correct, "count": count}))
    else:
        print(f"{model}: accuracy {accuracy:.2%} ({correct}/{count} images), "
              f"manifest says {manifest['accuracy']['int8' if args.int8 else 'onnx']['accuracy']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
