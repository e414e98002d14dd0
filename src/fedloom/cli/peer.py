"""``fedloom peer``: one node of a gossip topology, averaging with its neighbours, no server.

CONFIG.toml has a ``[topology]`` with ``kind = "gossip"`` and ``[topology.addresses]``
(every node's host:port), the client's code in ``[clients].app`` (and ``[data]``), the
run seed and number of rounds in ``[run]``, and what each fit gets in
``[strategy.config]``. Every node runs the same file with its own ``--name``. Each
round the node trains, publishes its model, fetches its neighbours' models and mixes
them as `fedloom.simulation.simulate_gossip` does; at the end it writes its model to
``<run folder>/<NAME>/weights.safetensors`` (and ``gossip.json``: who was left out of
which round) and exits 0.

Security as ``fedloom server`` for the node's own service (``--certs DIR`` or
``--cert``/``--key``, and ``--tokens`` or ``--secret-file``); towards its neighbours the
node trusts ``--ca`` (default ``DIR/ca.pem`` with ``--certs``) and sends ``--token``/
``--token-file`` (default: its own entry in ``--tokens``, or the shared secret).
``--insecure`` is the explicit opt-out (plain text, tokens optional).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.cli import server as server_command
from fedloom.cli._options import (
    SubParsers,
    fail,
    host_port,
    positive_int,
    read_secret,
    warn_insecure,
)
from fedloom.cli._runs import run_folder
from fedloom.config import SimulationConfig, load_config
from fedloom.core import Client, ClientContext
from fedloom.errors import ConfigError, ConnectError, did_you_mean
from fedloom.topology import Topology

if TYPE_CHECKING:
    from fedloom.transport.grpc.security import TlsConfig, Tokens

__all__ = ["WEIGHTS_FILE", "add_parser", "run"]

WEIGHTS_FILE = "weights.safetensors"


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``peer`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "peer",
        help="run one node of a gossip topology (decentralized, no server)",
        description="Train, exchange models with the neighbours named in CONFIG.toml's "
        "[topology] and mix them every round; write the final model to the run folder.",
    )
    parser.add_argument("config", metavar="CONFIG.toml", type=Path, help="the federation's config")
    parser.add_argument("--name", required=True, help="this node's name in [topology].nodes")
    parser.add_argument(
        "--address",
        type=host_port,
        metavar="HOST:PORT",
        help="listen here instead of [topology.addresses].NAME (e.g. 0.0.0.0:9000)",
    )
    parser.add_argument("--rounds", type=positive_int, metavar="N", help="overrides [run].rounds")
    parser.add_argument("--seed", type=int, metavar="S", help="overrides [run].seed")
    parser.add_argument("--no-train", action="store_true", help="only average (consensus)")
    parser.add_argument("--run-dir", type=Path, metavar="DIR", help="parent of the run folder")
    parser.add_argument(
        "--join-timeout-s", type=float, default=300.0, metavar="S", help="round 1's deadline"
    )
    parser.add_argument(
        "--round-timeout-s", type=float, default=60.0, metavar="S", help="later rounds' deadline"
    )
    tls = parser.add_argument_group("TLS (required unless --insecure)")
    tls.add_argument("--certs", type=Path, metavar="DIR", help="DIR/server.pem, .key and ca.pem")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="this node's PEM certificate")
    tls.add_argument("--key", type=Path, metavar="FILE", help="its PEM private key")
    tls.add_argument("--client-ca", type=Path, metavar="FILE", help="require client certificates")
    tls.add_argument("--ca", type=Path, metavar="FILE", help="CA of the neighbours' certificates")
    auth = parser.add_argument_group("tokens (required unless --insecure)")
    accepted = auth.add_mutually_exclusive_group()
    accepted.add_argument("--tokens", type=Path, metavar="FILE", help="per-node tokens (.toml)")
    accepted.add_argument("--secret-file", type=Path, metavar="FILE", help="one shared secret")
    own = auth.add_mutually_exclusive_group()
    own.add_argument("--token", metavar="T", help="this node's token towards its neighbours")
    own.add_argument("--token-file", type=Path, metavar="FILE", help="a file with it")
    parser.add_argument("--insecure", action="store_true", help="plain text (trusted networks)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the node until its last round and write its model.

    Returns:
        0 when the node ran every round, 2 for bad options or config, 1 when the client
        could not be built or a neighbour refused this node, 130 when interrupted.
    """
    try:
        from fedloom.gossiping import gossip
        from fedloom.transport.codec import save_weights
    except ImportError as exc:  # no grpc extra: the message names it
        return fail(exc, status=2)
    try:
        config = load_config(args.config, role="client")
        topology, addresses = _gossip_topology(config, args.name)
        app = config.build_client()
        tls, tokens = server_command.listening_security(args)
        peer_tls = _peer_tls(args, tls)
        peer_token = _peer_token(args, tokens)
    except ConfigError as exc:
        return fail(exc, status=2)
    if args.insecure:
        warn_insecure()
    seed = args.seed if args.seed is not None else config.run.seed
    context = ClientContext(
        client_id=args.name,
        partition_id=topology.nodes.index(args.name),
        num_partitions=len(topology.nodes),
        seed=seed,
        partitioner=app.partitioner,
    )
    try:
        client: Client = app.client_fn(context)
    except Exception as exc:  # user code: say where it failed
        return fail(f"[clients].app raised {type(exc).__name__}: {exc}", status=1)
    rounds = args.rounds or config.run.rounds

    def ready(port: int) -> None:
        print(f"peer '{args.name}' listening on port {port}", flush=True)

    def done(server_round: int, left_out: tuple[str, ...]) -> None:
        note = f"; left out (no model in time): {', '.join(left_out)}" if left_out else ""
        print(f"round {server_round}/{rounds} mixed{note}", flush=True)

    try:
        result = gossip(
            client,
            name=args.name,
            topology=topology,
            addresses=addresses,
            rounds=rounds,
            seed=seed,
            train=not args.no_train,
            config=dict(config.strategy.config),
            address=args.address,
            tls=tls,
            tokens=tokens,
            peer_tls=peer_tls,
            peer_token=peer_token,
            join_timeout_s=args.join_timeout_s,
            round_timeout_s=args.round_timeout_s,
            on_ready=ready,
            on_round=done,
        )
    except ConnectError as exc:
        return fail(exc, status=1)
    except ConfigError as exc:
        return fail(exc, status=2)
    except KeyboardInterrupt:
        return fail("interrupted", status=130)
    folder = run_folder(config, args.run_dir) / args.name
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / WEIGHTS_FILE, result.weights)
    summary = {"node": args.name, "rounds": result.rounds, "left_out": result.left_out}
    (folder / "gossip.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"peer '{args.name}' ran {result.rounds} rounds; model: {folder / WEIGHTS_FILE}")
    return 0


def _gossip_topology(config: SimulationConfig, name: str) -> tuple[Topology, dict[str, str]]:
    """The config's gossip topology and addresses, with `name` one of its nodes."""
    where = f"{config.path}"
    if config.topology is None or config.topology.kind != "gossip":
        kind = "no [topology]" if config.topology is None else f"kind {config.topology.kind!r}"
        raise ConfigError(
            f'{where}: fedloom peer needs a [topology] with kind = "gossip", but it has '
            f"{kind}. For a server and clients use `fedloom server` and `fedloom client`.",
            field="topology.kind",
        )
    if name not in config.topology.nodes:
        raise ConfigError(
            f"{where}: --name {name!r} is not a node of [topology]; its nodes are "
            f"{', '.join(config.topology.nodes)}.{did_you_mean(name, config.topology.nodes)}",
            field="--name",
            value=name,
        )
    if config.addresses is None:
        raise ConfigError(
            f"{where}: fedloom peer needs every node's address: add a [topology.addresses] "
            'table, e.g. n0 = "127.0.0.1:9000".',
            field="topology.addresses",
        )
    return config.topology, dict(config.addresses)


def _peer_tls(args: argparse.Namespace, tls: TlsConfig | None) -> TlsConfig | None:
    """The CA to trust when calling neighbours (``--ca``, else ``--certs``/ca.pem)."""
    from fedloom.transport.grpc.security import TlsConfig, channel_credentials

    if tls is None:
        if args.ca is not None:
            raise ConfigError("--insecure turns TLS off, but --ca was given. Drop one of them.")
        return None
    ca = args.ca if args.ca is not None else (args.certs / "ca.pem" if args.certs else None)
    if ca is None:
        raise ConfigError(
            "the peer needs the CA of its neighbours' certificates: pass --ca FILE, or "
            "--certs DIR holding ca.pem (made with `fedloom certs DIR`).",
            field="--ca",
        )
    peer = TlsConfig(ca=ca)
    channel_credentials(peer)  # reads the file now, so a wrong path is a usage error
    return peer


def _peer_token(args: argparse.Namespace, tokens: Tokens | None) -> str | None:
    """This node's token: ``--token``/``--token-file``, else its entry in ``--tokens``."""
    if args.token is not None:
        return str(args.token)
    if args.token_file is not None:
        return read_secret(args.token_file, what="token", option="--token-file")
    if tokens is None:
        return None
    if tokens.shared_secret is not None:
        return tokens.shared_secret
    known = tokens.clients
    if args.name not in known:
        raise ConfigError(
            f"--tokens has no token for node '{args.name}'; it lists: "
            f"{', '.join(sorted(known))}. Add one for it (`fedloom certs DIR --client "
            f"{args.name}`) or pass --token-file.",
            field="--tokens",
        )
    return known[args.name]
