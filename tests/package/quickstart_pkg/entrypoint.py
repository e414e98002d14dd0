"""Entry points of the quickstart package: a 64-64-10 MLP on the client's share of digits.

The client's data is an .npz (x_train, y_train, x_test, y_test) named by {data}.
A file ``<data>.crash`` makes the next ``train`` crash with SIGSEGV (and removes it),
so tests can check that a crashing entry point fails only its own task.
"""

import os
import signal
import sys

import numpy as np
import torch
from torch import nn

from fedloom.package.helpers import get_helper, save_metadata, save_metrics

torch.set_num_threads(1)
helper = get_helper("pytorchhelper")


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def load_model(path):
    model = build()
    model.load_state_dict({name: torch.from_numpy(a) for name, a in helper.load(path).items()})
    return model


def load_data(path):
    with np.load(path, allow_pickle=False) as data:
        return {name: torch.from_numpy(data[name]) for name in data.files}


def init(out_path):
    helper.save(build().state_dict(), out_path)


def train(in_path, out_path, data_path):
    if os.path.exists(data_path + ".crash"):
        os.remove(data_path + ".crash")
        print("crashing on purpose", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    data = load_data(data_path)
    x, y = data["x_train"], data["y_train"]
    model = load_model(in_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(len(x))
    for _ in range(2):
        for batch in torch.randperm(len(x), generator=generator).split(16):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    save_metadata({"num_examples": len(x), "epochs": 2}, out_path)
    helper.save(model.state_dict(), out_path)


def validate(in_path, out_json_path, data_path):
    data = load_data(data_path)
    model = load_model(in_path)
    with torch.no_grad():
        logits = model(data["x_test"])
        loss = nn.functional.cross_entropy(logits, data["y_test"])
        accuracy = (logits.argmax(dim=1) == data["y_test"]).float().mean()
    save_metrics(
        {"loss": loss.item(), "accuracy": accuracy.item(), "num_examples": len(data["y_test"])},
        out_json_path,
    )


if __name__ == "__main__":
    {"init": init, "train": train, "validate": validate}[sys.argv[1]](*sys.argv[2:])
