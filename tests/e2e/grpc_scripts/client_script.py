"""A fedloom gRPC client for the deployment tests: `fedloom.connect` with one task's client.

Tasks: ``quickstart`` (examples/quickstart, partition `--partition` of `--num-partitions`),
``toy`` (weights ``{"x": [0, 0, 0]}``, fit returns ``x + 1`` from 1 example; with ``--slow``
it first prints ``FITTING <n>`` and stalls for 60 s; with ``--gate`` its fits after the
first `--gate-after` wait for that file) and ``big`` (fit checks that it received the big
pattern, then returns it ``+ 1``).

Exits 0 when the server ends the run, and 2 with ``REFUSED: <reason>`` on stderr when
the server refuses the client (`ConnectError`).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
from common import flat_sha256, pattern_sha256

import fedloom
from fedloom.client import FunctionClient
from fedloom.errors import ConnectError
from fedloom.transport.grpc.security import TlsConfig

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart"
GATE_WAIT_S = 60.0


class BigClient:
    """Checks the received weights against the pattern and returns them plus one."""

    def __init__(self, size: int, out: Path) -> None:
        self._size = size
        self._out = out

    def get_weights(self) -> fedloom.Weights:
        raise RuntimeError("the server sends initial_weights; get_weights is not used")

    def fit(self, weights: fedloom.Weights, config: fedloom.Config) -> fedloom.FitRes:
        started = time.time()
        received = flat_sha256(weights.flat)
        expected = pattern_sha256(self._size)
        plus_one = weights.flat + np.float32(1)
        report = {
            "size": int(weights.flat.size),
            "received": received,
            "expected": expected,
            "fit_started": started,
            "fit_ended": time.time(),
        }
        self._out.write_text(json.dumps(report))
        if received != expected:
            raise ValueError(f"received weights differ from the pattern: {report}")
        return fedloom.FitRes(fedloom.Weights.from_flat(weights.spec, plus_one), 1, {})


def toy_client(args: argparse.Namespace) -> FunctionClient:
    """``x + 1`` from 1 example; optionally stalls or waits for a gate file."""
    fits = 0

    def fit(weights: fedloom.Weights, config: fedloom.Config) -> tuple[dict, int, dict]:
        nonlocal fits
        fits += 1
        if args.slow:
            print(f"FITTING {fits}", flush=True)
            time.sleep(60.0)  # long enough to be killed mid-round
        if args.gate is not None and fits > args.gate_after:
            deadline = time.monotonic() + GATE_WAIT_S
            while not args.gate.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gate {args.gate} did not open in {GATE_WAIT_S:g} s")
                time.sleep(0.02)
        return {"x": weights["x"] + 1}, 1, {}

    return FunctionClient(weights={"x": np.zeros(3)}, fit=fit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=("quickstart", "toy", "big"), required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--token")
    parser.add_argument("--ca", type=Path, help="CA certificate to trust (TLS)")
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--num-partitions", type=int, default=1)
    parser.add_argument("--slow", action="store_true", help="toy: fit prints FITTING, stalls")
    parser.add_argument("--gate", type=Path, help="toy: later fits wait for this file")
    parser.add_argument("--gate-after", type=int, default=1, help="fits that skip the gate")
    parser.add_argument("--size", type=int, default=2**28, help="big: values of the model")
    parser.add_argument("--out", type=Path, help="big: where fit reports what it received")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    if args.task == "quickstart":
        import torch

        torch.set_num_threads(1)  # a tiny MLP: threads cost more than they give
        sys.path.insert(0, str(QUICKSTART))
        import task

        from fedloom.data import Dirichlet

        context = fedloom.ClientContext(
            client_id=args.name,
            partition_id=args.partition,
            num_partitions=args.num_partitions,
            seed=0,
            partitioner=Dirichlet(alpha=0.5),
        )
        client = task.client_fn(context)
    elif args.task == "big":
        client = BigClient(args.size, args.out)
    else:
        client = toy_client(args)

    logging.info("connecting to %s as '%s'", args.address, args.name)
    try:
        done = fedloom.connect(
            client,
            address=args.address,
            name=args.name,
            token=args.token,
            tls=None if args.ca is None else TlsConfig(ca=args.ca),
        )
    except ConnectError as exc:
        print(f"REFUSED: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"FINISHED {done} tasks, max rss {rss:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
