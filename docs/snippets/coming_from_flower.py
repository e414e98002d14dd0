"""Flower's quickstart job in fedloom: a PyTorch classifier, 10 clients, FedAvg.

Flower's ``NumPyClient`` (get_parameters / set_parameters / fit / evaluate), its
``ClientApp`` and its ``ServerApp`` become one ``client_fn`` returning a
`TorchClient` and one call to `fedloom.simulate` (or `fedloom server` and
`fedloom client` processes over gRPC, with the same ``client_fn``). The data is
scikit-learn's bundled digits, so nothing is downloaded.

Run it: ``python docs/snippets/coming_from_flower.py``.
"""

# --8<-- [start:client]
import torch
from sklearn.datasets import load_digits
from torch import nn

import fedloom
from fedloom import ClientContext
from fedloom.client import TorchClient
from fedloom.data import Dirichlet

digits = load_digits()
X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
Y = torch.tensor(digits.target)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def client_fn(context: ClientContext) -> TorchClient:
    """One client: its Dirichlet share of the digits, 90% to train, 10% to test."""
    rows = torch.tensor(context.partition(digits.target))
    cut = len(rows) * 9 // 10
    return TorchClient(
        make_net(),
        train=(X[rows[:cut]], Y[rows[:cut]]),
        test=(X[rows[cut:]], Y[rows[cut:]]),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    )


# --8<-- [end:client]


# --8<-- [start:run]
def main(rounds: int = 10, num_clients: int = 10) -> fedloom.RunResult:
    result = fedloom.simulate(
        client_fn,
        num_clients=num_clients,
        rounds=rounds,
        strategy=fedloom.fedavg(fraction_fit=1.0, fraction_evaluate=1.0),
        partitioner=Dirichlet(alpha=0.5),
    )
    for record in result.history:  # Flower's "History (loss, distributed)"
        print(record.server_round, record.metrics["evaluate.loss"])
    return result


# --8<-- [end:run]


if __name__ == "__main__":
    print("accuracy:", main().history.last("evaluate.accuracy"))
