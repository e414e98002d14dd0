"""Entry points of the compute package: a 784-64-10 MLP in NumPy on one client's MNIST digits.

Each client runs ``python entrypoint.py COMMAND ...`` as fedloom.yaml says, in a
fresh process per task: ``{in}``/``{out}`` are model files (safetensors, written
and read by the helper), ``{data}`` is this client's .npz from prepare_data.py
(``x_train``, ``y_train``, ``x_test``, ``y_test``: 28x28 uint8 images and their
labels). NumPy only, so a task starts in well under a second. As in FEDn, the
only fedloom line is the helper import.
"""

import sys
import zlib

import numpy as np

from fedloom.package.helpers import get_helper, save_metadata, save_metrics

HIDDEN = 64
helper = get_helper("numpyhelper")


def load_data(path, split):
    with np.load(path, allow_pickle=False) as data:
        x = data[f"x_{split}"].reshape(len(data[f"x_{split}"]), -1).astype(np.float32) / 255.0
        return x, data[f"y_{split}"]


def forward(model, x):
    hidden = np.maximum(x @ model["w1"] + model["b1"], 0.0)
    logits = hidden @ model["w2"] + model["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return hidden, probabilities / probabilities.sum(axis=1, keepdims=True)


def init(out_path, seed=0):
    rng = np.random.default_rng(int(seed))  # He initialisation
    model = {
        "w1": rng.normal(0.0, np.sqrt(2 / 784), (784, HIDDEN)),
        "b1": np.zeros(HIDDEN),
        "w2": rng.normal(0.0, np.sqrt(2 / HIDDEN), (HIDDEN, 10)),
        "b2": np.zeros(10),
    }
    helper.save({name: array.astype(np.float32) for name, array in model.items()}, out_path)


def train(in_path, out_path, data_path, epochs=2, lr=0.1, batch_size=32):
    epochs, lr, batch_size = int(epochs), float(lr), int(batch_size)
    x, y = load_data(data_path, "train")
    model = helper.load(in_path)
    with open(in_path, "rb") as stream:  # the shuffle is seeded by the global model
        rng = np.random.default_rng(zlib.crc32(stream.read()))
    for _ in range(epochs):  # minibatch SGD on the cross-entropy
        for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // batch_size)):
            hidden, probabilities = forward(model, x[batch])
            grad_logits = probabilities
            grad_logits[np.arange(len(batch)), y[batch]] -= 1.0
            grad_logits /= len(batch)
            grad_hidden = (grad_logits @ model["w2"].T) * (hidden > 0)
            model["w2"] -= lr * hidden.T @ grad_logits
            model["b2"] -= lr * grad_logits.sum(axis=0)
            model["w1"] -= lr * x[batch].T @ grad_hidden
            model["b1"] -= lr * grad_hidden.sum(axis=0)
    save_metadata({"num_examples": len(y), "epochs": epochs, "lr": lr}, out_path)
    helper.save(model, out_path)


def validate(in_path, out_json_path, data_path):
    model = helper.load(in_path)
    metrics = {}
    for split in ("train", "test"):
        x, y = load_data(data_path, split)
        probabilities = forward(model, x)[1]
        correct = probabilities[np.arange(len(y)), y]
        metrics[f"{split}_loss"] = float(-np.log(np.maximum(correct, 1e-12)).mean())
        metrics[f"{split}_accuracy"] = float((probabilities.argmax(axis=1) == y).mean())
    metrics["loss"] = metrics["test_loss"]
    metrics["num_examples"] = len(y)
    save_metrics(metrics, out_json_path)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"init": init, "train": train, "validate": validate}[command](*args)
