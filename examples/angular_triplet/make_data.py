"""Write a small generated face-like data set for the Angular-Triplet example.

    python make_data.py OUT [--identities 10] [--per-identity 4] [--size 112] [--seed 0]

Writes OUT/<identity>/<n>.png (RGB PNG) and OUT/train.txt, one "<identity>/<n>.png <label>"
line per image, as Caffe's ImageData layer reads it (the nets set root_folder to the
folder, so the names in the list are relative to it).

Every identity has its own pattern: a few smooth blobs of its own colours at its own
places, left-right symmetric like a face (the nets train with mirror: true). Each image
of an identity shifts it by a pixel or two, changes its brightness and adds noise, so
images of one identity are alike but not equal. The output depends only on the
arguments: the same command gives the same bytes.
"""

import argparse
import os
import sys

import numpy as np


def identity_pattern(rng, size):
    """float32 (size, size, 3) in [0, 1]: the identity's blobs on a grey background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.full((size, size, 3), 0.5, dtype=np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.5)   # left half; mirrored below
        radius = rng.uniform(0.08, 0.2)
        colour = rng.uniform(-0.5, 0.5, size=3).astype(np.float32)
        for x0 in (cx, 1.0 - cx):
            blob = np.exp(-((yy - cy) ** 2 + (xx - x0) ** 2) / (2 * radius ** 2))
            image += blob[..., None] * colour
    return np.clip(image, 0.0, 1.0)


def variant(rng, pattern):
    """One image of an identity: its pattern shifted, re-lit and with noise, as uint8."""
    dy, dx = rng.integers(-2, 3, size=2)
    image = np.roll(pattern, (int(dy), int(dx)), axis=(0, 1))
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.05, size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def make_data(out, identities=10, per_identity=4, size=112, seed=0):
    """Write the images and ``out/train.txt``; return the list file's path."""
    from PIL import Image

    if identities < 2 or per_identity < 1 or size < 8:
        raise ValueError("need identities >= 2, per_identity >= 1 and size >= 8; got %d, %d, %d"
                         % (identities, per_identity, size))
    rng = np.random.default_rng(seed)
    lines = []
    for label in range(identities):
        folder = "%03d" % label
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        pattern = identity_pattern(rng, size)
        for n in range(per_identity):
            name = "%s/%d.png" % (folder, n)
            Image.fromarray(variant(rng, pattern), "RGB").save(os.path.join(out, name))
            lines.append("%s %d\n" % (name, label))
    list_path = os.path.join(out, "train.txt")
    with open(list_path, "w") as f:
        f.writelines(lines)
    return list_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the folder to write (created if missing)")
    parser.add_argument("--identities", type=int, default=10,
                        help="number of identities (the nets' num_output is 10)")
    parser.add_argument("--per-identity", type=int, default=4, help="images per identity")
    parser.add_argument("--size", type=int, default=112,
                        help="image height and width (112 as the deploy net; the trunk "
                             "needs at least 35)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = make_data(args.out, args.identities, args.per_identity, args.size, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print("wrote %d images and %s" % (args.identities * args.per_identity, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
