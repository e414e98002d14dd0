"""``fedloom runs``: list recorded runs, show one, export its history, fetch its weights.

Runs are read through `fedloom.observe.catalog`: ``--store`` is a store URL
(``postgresql://...``, ``sqlite:///...``), a SQLite file, a run folder, or a
folder of run folders (default ``runs``). A run is named by its id or its name.

- ``fedloom runs list``: one line per run;
- ``fedloom runs show RUN [--round N]``: the run, its rounds with their metrics and its
  clients as tables (``--round N``: that round's per-client results);
- ``fedloom runs export RUN [--format csv|json] [--clients] [-o FILE]``: the history
  (``--clients``: per-client results) as CSV, or everything as JSON;
- ``fedloom runs weights RUN [--round N|last|best] -o FILE``: the checked global
  weights after a round as a safetensors file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from fedloom.cli._options import SubParsers, fail
from fedloom.errors import ConfigError, FedloomError
from fedloom.observe import format_metrics
from fedloom.observe.catalog import RunCatalog, open_catalog
from fedloom.store import BEST_RULE, ClientResultInfo, RoundInfo, RunInfo
from fedloom.transport.codec import save_weights

__all__ = ["add_parser", "parse_which", "run"]

DEFAULT_STORE = "runs"


def parse_which(text: str) -> int | Literal["last", "best"]:
    """An argparse type: a round number >= 0, ``last`` or ``best``."""
    if text in ("last", "best"):
        return "last" if text == "last" else "best"
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"expected a round number >= 0, 'last' or 'best', got {text!r}"
    )


def _round_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a round number >= 0, got {text!r}")
    return int(text)


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``runs`` and its subcommands on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "runs",
        help="list recorded runs, show one, export its history, fetch its weights",
        description="Read recorded runs: list them, show one as tables, export its history "
        "(CSV/JSON), or write the weights of any round (or the best one) to a file.",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default=DEFAULT_STORE,
        help="a store URL (postgresql://..., sqlite:///...), a SQLite file, a run folder or "
        f"a folder of run folders (default: {DEFAULT_STORE})",
    )
    parser.set_defaults(handler=lambda args: _usage(parser))
    actions = parser.add_subparsers(title="actions", metavar="ACTION")

    listing = actions.add_parser("list", help="one line per run", description="List the runs.")
    listing.set_defaults(handler=run, action="list")

    show = actions.add_parser(
        "show", help="a run's rounds, clients and metrics", description="Show one run."
    )
    show.add_argument("run", metavar="RUN", help="run id or name")
    show.add_argument(
        "--round", type=_round_number, metavar="N", help="also show round N's client results"
    )
    show.set_defaults(handler=run, action="show")

    export = actions.add_parser(
        "export",
        help="a run's history as CSV or JSON",
        description="Export a run's history: CSV with one row per round (--clients: per "
        "client result), or JSON with the run, rounds, clients and client results.",
    )
    export.add_argument("run", metavar="RUN", help="run id or name")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="default: csv")
    export.add_argument(
        "--clients", action="store_true", help="CSV: one row per client result instead"
    )
    export.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)"
    )
    export.set_defaults(handler=run, action="export")

    weights = actions.add_parser(
        "weights",
        help="write a round's global weights to a safetensors file",
        description=f"Write the global weights after a round to a safetensors file. 'best' is "
        f"{BEST_RULE}.",
    )
    weights.add_argument("run", metavar="RUN", help="run id or name")
    weights.add_argument(
        "--round",
        type=parse_which,
        default="last",
        metavar="N|last|best",
        help="which round's weights (default: last)",
    )
    weights.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the .safetensors file"
    )
    weights.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    weights.set_defaults(handler=run, action="weights")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Open the runs at ``--store`` and do the action.

    Returns:
        0 on success, 2 for an unknown run or round or a bad option, 1 when the store
        cannot be read (unreachable, damaged, or a checkpoint fails its checksum).
    """
    try:
        catalog = open_catalog(args.store)
    except ConfigError as exc:
        return fail(exc, status=2)
    except FedloomError as exc:
        return fail(exc, status=1)
    try:
        with catalog:
            return _act(catalog, args)
    except ConfigError as exc:
        return fail(exc, status=2)
    except FedloomError as exc:
        return fail(exc, status=1)


def _act(catalog: RunCatalog, args: argparse.Namespace) -> int:
    console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    if args.action == "list":
        _print_list(console, catalog.list_runs(), args.store)
    elif args.action == "show":
        _show(console, catalog, args.run, args.round)
    elif args.action == "export":
        text = _export(catalog, args.run, fmt=args.format, clients=args.clients)
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
            print(f"wrote {args.output}", file=sys.stderr)
    else:
        if args.output.exists() and not args.force:
            raise ConfigError(
                f"{args.output} exists; pass --force to overwrite it, or another -o FILE.",
                field="--output",
                value=str(args.output),
            )
        run_id = catalog.resolve(args.run)
        which = args.round
        if which == "best":
            from fedloom.store.base import best_round

            which = best_round(run_id, catalog.rounds(run_id))
        elif which == "last":
            which = catalog.get_run(run_id).rounds_done
        weights = catalog.load_weights(run_id, which)
        save_weights(args.output, weights, metadata={"run_id": run_id, "round": str(which)})
        print(f"wrote the weights after round {which} of run {run_id} to {args.output}")
    return 0


def _when(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"
    return "" if value is None else str(value)


def _print_list(console: Console, runs: list[RunInfo], store: str) -> None:
    if not runs:
        console.print(f"no runs in {store}", markup=False, highlight=False)
        return
    table = Table(title=f"runs in {store}", title_justify="left")
    for name in ("run id", "name", "status", "rounds", "created", "seed", "code"):
        table.add_column(name)
    for info in runs:
        table.add_row(
            info.run_id,
            info.name,
            info.status,
            str(info.rounds_done),
            _when(info.created_at),
            str(info.seed),
            info.code_version,
        )
    console.print(table)


def _show(console: Console, catalog: RunCatalog, run: str, server_round: int | None) -> None:
    info = catalog.get_run(run)
    rounds = catalog.rounds(info.run_id)
    header = Table(show_header=False, title=f"run {info.name}", title_justify="left")
    header.add_column("key", style="bold")
    header.add_column("value")
    for key, value in (
        ("run id", info.run_id),
        ("status", info.status),
        ("rounds done", str(info.rounds_done)),
        ("created", _when(info.created_at)),
        ("seed", str(info.seed)),
        ("code version", info.code_version),
        ("folder", info.folder),
    ):
        header.add_row(key, value)
    console.print(header)

    keys = sorted({key for r in rounds for key in r.metrics})
    table = Table(title="rounds", title_justify="left")
    for name in ("round", "outcome", "duration (s)", "results", "failures", *keys):
        table.add_column(name, justify="right" if name != "outcome" else "left")
    for r in rounds:
        duration = r.ended_at - r.started_at if r.server_round > 0 else None
        table.add_row(
            str(r.server_round),
            r.outcome,
            _cell(duration),
            str(r.num_results),
            str(r.num_failures),
            *(_cell(r.metrics.get(key)) for key in keys),
        )
    console.print(table)

    results = catalog.client_results(info.run_id)
    clients = Table(title="clients", title_justify="left")
    for name in ("client", "first seen", "last seen", "results", "failures", "last failure"):
        clients.add_column(name)
    for client in catalog.clients(info.run_id):
        own = [result for result in results if result.client_id == client.client_id]
        failed = [result for result in own if result.failure]
        clients.add_row(
            client.client_id,
            _when(client.first_seen),
            _when(client.last_seen),
            str(len(own) - len(failed)),
            str(len(failed)),
            failed[-1].failure or "" if failed else "",
        )
    console.print(clients)

    if server_round is not None:
        known = {r.server_round for r in rounds}
        if server_round not in known:
            raise ConfigError(
                f"run '{info.run_id}' has no round {server_round}; recorded rounds: "
                f"{min(known, default=0)}..{max(known, default=0)}.",
                field="--round",
                value=server_round,
            )
        per_round = Table(title=f"round {server_round}: client results", title_justify="left")
        for name in ("client", "kind", "examples", "duration (s)", "metrics", "failure"):
            per_round.add_column(name)
        for result in catalog.client_results(info.run_id, server_round=server_round):
            per_round.add_row(
                result.client_id,
                result.kind,
                str(result.num_examples),
                _cell(result.duration_s),
                format_metrics(result.metrics, limit=6),
                result.failure or "",
            )
        console.print(per_round)


def _export(catalog: RunCatalog, run: str, *, fmt: str, clients: bool) -> str:
    info = catalog.get_run(run)
    rounds = catalog.rounds(info.run_id)
    results = catalog.client_results(info.run_id)
    if fmt == "json":
        document = {
            "run": asdict(info),
            "rounds": [asdict(r) for r in rounds],
            "clients": [asdict(c) for c in catalog.clients(info.run_id)],
            "client_results": [asdict(r) for r in results],
            "model_versions": [asdict(m) for m in catalog.model_versions(info.run_id)],
        }
        return json.dumps(_json_safe(document), indent=2) + "\n"
    return _results_csv(results) if clients else _rounds_csv(rounds)


def _results_csv(results: list[ClientResultInfo]) -> str:
    out = io.StringIO()
    keys = sorted({key for result in results for key in result.metrics})
    columns = ["server_round", "client_id", "kind", "num_examples", "duration_s"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "failure", "staleness", *keys])
    for res in results:
        row = [res.server_round, res.client_id, res.kind, res.num_examples, res.duration_s]
        extra = [res.failure or "", _blank(res.staleness)]
        writer.writerow([*row, *extra, *(_blank(res.metrics.get(k)) for k in keys)])
    return out.getvalue()


def _rounds_csv(rounds: list[RoundInfo]) -> str:
    out = io.StringIO()
    keys = sorted({key for r in rounds for key in r.metrics})
    writer = csv.writer(out, lineterminator="\n")
    columns = ["server_round", "started_at", "ended_at", "duration_s", "outcome"]
    writer.writerow([*columns, "num_results", "num_failures", *keys])
    for r in rounds:
        row = [r.server_round, r.started_at, r.ended_at, r.ended_at - r.started_at, r.outcome]
        writer.writerow(
            [*row, r.num_results, r.num_failures, *(_blank(r.metrics.get(k)) for k in keys)]
        )
    return out.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
