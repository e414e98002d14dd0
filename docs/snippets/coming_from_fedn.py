"""FEDn's compute-package job in fedloom: build, sign, check, unpack and run a package.

FEDn's ``tar -czvf package.tar.gz client`` and its upload become
`build_package` (reproducible, with a sha256 and an Ed25519 signature); each
client checks the package against the signer's public key before unpacking it
and runs its entry points as subprocesses on safetensors model files. Here the
federation runs in one process with `fedloom.simulate`; over gRPC the server
hands the package out (``fedloom server --package``, ``fedloom client --package-dir``).

Run it: ``python docs/snippets/coming_from_fedn.py``.
"""

# --8<-- [start:run]
import tempfile
from pathlib import Path

import numpy as np

import fedloom
from fedloom import ClientContext
from fedloom.package import (
    PackageClient,
    build_package,
    check_package,
    generate_signing_key,
    load_public_keys,
)

PACKAGE_SOURCE = Path(__file__).parent / "fedn_package"  # fedloom.yaml + entrypoint.py


def main(rounds: int = 3, num_clients: int = 3) -> fedloom.RunResult:
    work = Path(tempfile.mkdtemp(prefix="fedn-"))
    private_key, public_key = generate_signing_key(work / "signer.pem")
    built = build_package(PACKAGE_SOURCE, work / "package.tar.gz", signing_key=private_key)

    # Each client: check digest and signer, then unpack into its own folder.
    package = check_package(built.path, trusted_keys=load_public_keys([public_key]))
    rng = np.random.default_rng(0)
    clients = {}
    for i in range(num_clients):  # each client's data: y = x @ [1, -2, 3] + 0.5 + noise
        x = rng.normal(size=(100, 3))
        y = x @ np.array([1.0, -2.0, 3.0]) + 0.5 + 0.1 * rng.normal(size=100)
        np.savez(work / f"data-{i}.npz", x=x, y=y)
        clients[str(i)] = PackageClient.from_package(
            package, work / f"client-{i}", data=str(work / f"data-{i}.npz"), name=str(i)
        )

    def client_fn(context: ClientContext) -> PackageClient:
        return clients[context.client_id]

    return fedloom.simulate(
        client_fn,
        num_clients=num_clients,
        rounds=rounds,
        strategy=fedloom.fedavg(fraction_evaluate=1.0),  # validate runs on every client
    )


# --8<-- [end:run]


if __name__ == "__main__":
    print("validation mse:", main().history.last("evaluate.mse"))
