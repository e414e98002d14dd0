"""OpenFed's demo in fedloom: aggregation every 2 arrivals, client step hooks, gRPC.

OpenFed's ``AggregateCount(count=2)`` is FedBuff's buffer of 2 (`main_async`, in
simulation); its step functions (``StopAtVersion``, before/after upload and
download) are `ClientHooks` (`main_hooks`: the same FedBuff over gRPC, one server
and two clients as threads of this process on loopback, in plain text as the
launcher runs them; across machines use TLS and tokens); its
``openfed.launch --nproc_per_node 3`` is ``fedloom launch --nproc 3``.

Run it: ``python docs/snippets/coming_from_openfed.py``.
"""

# --8<-- [start:run]
import threading

import torch
from torch import nn

import fedloom
from fedloom.client import TorchClient
from fedloom.core.hooks import ClientHooks, StopAtVersion
from fedloom.strategies import fedbuff


def make_client(seed: int) -> TorchClient:
    """A linear model y = 2x + 1 on the client's own 64 samples."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 1, generator=generator)
    torch.manual_seed(0)
    return TorchClient(
        nn.Linear(1, 1),
        train=(x, 2 * x + 1),
        loss_fn=nn.MSELoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    )


def main_async(versions: int = 6, num_clients: int = 4) -> fedloom.RunResult:
    """Asynchronous: `num_clients` train at once, every 2 arrivals make a new version."""
    return fedloom.simulate(
        lambda context: make_client(context.partition_id),
        num_clients=num_clients,
        rounds=versions,  # model versions: one per aggregation
        strategy=fedbuff(buffer_size=2, concurrency=num_clients),
    )


def main_hooks(versions: int = 3, num_clients: int = 2) -> tuple[fedloom.RunResult, list[str]]:
    """FedBuff over gRPC, step hooks on each client; clients stop after `versions`."""
    ready, port = threading.Event(), []
    uploads: list[str] = []
    hooks = ClientHooks()

    @hooks.after_upload  # OpenFed's after-upload step function
    def log_upload(event) -> None:
        if event.server_round is not None:  # None: the initial weights, before round 1
            uploads.append(f"{event.client} uploaded for version {event.server_round}")

    def client(rank: int) -> None:
        ready.wait(timeout=60)
        fedloom.connect(
            make_client(rank),
            address=f"127.0.0.1:{port[0]}",
            name=f"rank{rank}",
            hooks=[hooks, StopAtVersion(versions)],
        )

    threads = [threading.Thread(target=client, args=(r,)) for r in range(1, num_clients + 1)]
    for thread in threads:
        thread.start()
    result = fedloom.serve(
        rounds=versions,
        strategy=fedbuff(buffer_size=2, concurrency=num_clients),
        address="127.0.0.1:0",
        min_clients=num_clients,
        join_timeout_s=60,
        on_ready=lambda bound: (port.append(bound), ready.set()),
    )
    for thread in threads:
        thread.join(timeout=60)
    return result, uploads


# --8<-- [end:run]


if __name__ == "__main__":
    print("async weights:", dict(main_async().weights))  # close to w = 2, b = 1
    result, uploads = main_hooks()
    print("\n".join(uploads))
