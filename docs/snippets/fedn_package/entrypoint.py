"""FEDn-style entry points (NumPy linear regression): init, train and validate on model files.

Only the helper import differs from a FEDn entry point:
``from fedloom.package.helpers import get_helper, save_metadata, save_metrics``.
The client's data is an .npz holding ``x`` and ``y``, named by ``{data}``.
"""

import sys

import numpy as np

from fedloom.package.helpers import get_helper, save_metadata, save_metrics

helper = get_helper("numpyhelper")


def load_data(path):
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


def init(out_path):
    helper.save({"w": np.zeros(3), "b": np.zeros(1)}, out_path)


def train(in_path, out_path, data_path, epochs=20, lr=0.1):
    x, y = load_data(data_path)
    model = helper.load(in_path)
    w, b = model["w"], model["b"]
    for _ in range(epochs):  # full-batch gradient descent on the squared error
        error = x @ w + b[0] - y
        w = w - lr * 2 * x.T @ error / len(y)
        b = b - lr * 2 * error.mean(keepdims=True)
    save_metadata({"num_examples": len(y), "epochs": epochs, "lr": lr}, out_path)
    helper.save({"w": w, "b": b}, out_path)


def validate(in_path, out_json_path, data_path):
    x, y = load_data(data_path)
    model = helper.load(in_path)
    mse = float(np.mean((x @ model["w"] + model["b"][0] - y) ** 2))
    save_metrics({"mse": mse}, out_json_path)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"init": init, "train": train, "validate": validate}[command](*args)
