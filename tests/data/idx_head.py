"""Writes the first rows of an IDX images file and of its labels file (for the doc checks).

    python -m tests.data.idx_head SRC_IMAGES ROWS OUT_DIR

``OUT_DIR/head-images-idx3-ubyte.gz`` and ``OUT_DIR/head-labels-idx1-ubyte.gz`` hold the first
ROWS images and labels of SRC_IMAGES and the labels file beside it.
"""

import gzip
import os
import sys

from jaxrec.data import fashion_mnist as fm


def _write(path: str, magic: int, array) -> None:
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def main(src: str, rows: str, out: str) -> None:
  images, labels = fm.read_images_and_labels(src)
  n = int(rows)
  os.makedirs(out, exist_ok=True)
  _write(os.path.join(out, 'head-images-idx3-ubyte.gz'), fm.IMAGES_MAGIC, images[:n, ..., 0])
  _write(os.path.join(out, 'head-labels-idx1-ubyte.gz'), fm.LABELS_MAGIC,
         labels[:n].astype('uint8'))


if __name__ == '__main__':
  main(*sys.argv[1:])
