"""``fedloom certs``, ``fedloom server`` and ``fedloom client``: a real deployment over gRPC."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloom.cli.dashboard import add_dashboard_args
from fedloom.errors import DeploymentError

if TYPE_CHECKING:
    from fedloom.app import Federation


def cmd_certs(args: argparse.Namespace) -> int:
    from fedloom.transport.certs import DEFAULT_HOSTS, create_certs, revoke

    if args.revoke:
        for name in args.revoke:
            path = revoke(args.out, name)
        print(
            f"revoked {', '.join(args.revoke)} in {path}: a server running with --certs "
            f"{args.out} refuses their next call (certificate and token alike)"
        )
        return 0
    if args.clients is None:
        raise DeploymentError("fedloom certs: give --clients N (or --revoke NAME)")
    hosts = args.host or list(DEFAULT_HOSTS)
    written = create_certs(args.out, args.clients, hosts=hosts)
    print(
        f"wrote {len(written)} files to {args.out}: CA, server certificate for "
        f"{', '.join(hosts)}, and {args.clients} client certificates and tokens"
    )
    print(
        "give each client site ca.crt plus its own NAME.crt and NAME.key (or NAME.token); "
        "keep ca.key and enrolment.key on the server side"
    )
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from fedloom.app.user_code import server_federation
    from fedloom.config import load_config
    from fedloom.server.deploy import ServerOptions, serve
    from fedloom.tracking import render_summary_table

    logging.getLogger("fedloom").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"dataset.data_dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    opts = ServerOptions(
        address=args.address,
        state=Path(args.state),
        out=Path(args.out),
        certs=Path(args.certs) if args.certs else None,
        insecure=args.insecure,
        quiet=args.quiet,
        model=args.model,
        strategy=args.strategy,
        eval_data=Path(args.eval_data) if args.eval_data else None,
        new_run=args.new_run,
    )

    def build() -> Federation:  # the server side only: the model, the strategy, central evaluation
        return server_federation(
            cfg, model=opts.model, strategy=opts.strategy, eval_data=opts.eval_data
        )

    if args.dashboard is None:
        summary = serve(cfg, opts, build)
    else:
        from fedloom.cli.dashboard import live_dashboard

        config = cfg.model_dump(mode="json")
        with live_dashboard(args, opts.out, config, rounds=cfg.rounds, mode="deployment") as feed:
            summary = serve(cfg, dataclasses.replace(opts, live=feed), build)
    if not args.quiet:
        render_summary_table(summary, title="fedloom server summary")
    return 0


def _factory(args: argparse.Namespace) -> Any:
    from fedloom.app.clients import app_factory, csv_factory, demo_factory

    chosen = [x for x in (args.csv, args.dataset, args.app) if x]
    if len(chosen) != 1:
        raise DeploymentError(
            "give the client's local data with exactly one of --csv PATH, "
            "--dataset NAME --partition i/N, or --app module:function"
        )
    if args.csv:
        return csv_factory(args.csv, args.target)
    if args.app:
        return app_factory(args.app)
    if not args.partition:
        raise DeploymentError("--dataset needs --partition i/N (this client's share, 0-based)")
    index, sep, count = args.partition.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or int(count) < 1:
        raise DeploymentError(f"--partition expects i/N such as 0/5, got {args.partition!r}")
    return demo_factory(args.dataset, int(index), int(count))


def cmd_client(args: argparse.Namespace) -> int:
    from fedloom.client.deploy import ClientOptions, DeploymentClient

    logging.getLogger("fedloom").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    opts = ClientOptions(
        server=args.server,
        name=args.name,
        certs=Path(args.certs) if args.certs else None,
        insecure=args.insecure,
        token=args.token,
        give_up_after=args.give_up_after,
        quiet=args.quiet,
        state=Path(args.state) if args.state else None,
    )
    if args.insecure:
        print(
            "WARNING: --insecure: plaintext connection; nothing is encrypted or verified",
            flush=True,
        )
    return DeploymentClient(opts, _factory(args)).run()


def register(sub: Any) -> None:
    """Add the deployment subcommands to ``fedloom``'s subparsers."""
    certs = sub.add_parser("certs", help="create a CA, server and client certificates, tokens")
    certs.add_argument("--out", required=True, help="folder to write them to")
    certs.add_argument("--clients", type=int, help="client certificates to make")
    certs.add_argument(
        "--revoke",
        action="append",
        metavar="NAME",
        help="revoke client NAME in the --out folder (revoked.txt); a running server honours it "
        "at the client's next call; repeatable",
    )
    certs.add_argument(
        "--host",
        action="append",
        help="server host name or IP for its certificate; repeatable "
        "(default: 127.0.0.1 and localhost)",
    )
    certs.set_defaults(func=cmd_certs)

    server = sub.add_parser("server", help="run the coordinator of a real deployment (gRPC)")
    server.add_argument("--config", help="YAML config (the same file `fedloom run` takes)")
    server.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; repeatable",
    )
    server.add_argument("--data-dir", help="folder holding dataset files")
    server.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT to listen on")
    server.add_argument("--certs", help="folder from `fedloom certs` (TLS is on by default)")
    server.add_argument(
        "--state", required=True, help="state folder (SQLite + checkpoints); reuse it to resume"
    )
    server.add_argument("--out", required=True, help="results folder")
    server.add_argument(
        "--new-run",
        action="store_true",
        help="start a new run although --state holds checkpoints (or --out metrics) of a run its "
        "database does not record (old checkpoints are moved aside, not deleted)",
    )
    server.add_argument("--insecure", action="store_true", help="plaintext gRPC (trusted networks)")
    server.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        help="build the global model with your own factory, which returns a torch.nn.Module "
        "(it takes no arguments or the run's Config; it runs after torch.manual_seed(seed)); the "
        "server then loads no dataset, and central evaluation is off unless --eval-data is "
        "given (default: the config's model for the config's dataset)",
    )
    server.add_argument(
        "--eval-data",
        metavar="FILE.npz",
        help="central evaluation on this .npz file (numpy.savez(FILE, x=inputs, y=targets)): x "
        "holds the inputs exactly as the model takes them, shape (n, *input_shape); y holds "
        "integer class ids 0..C-1 (classification; the model has C outputs) or floats "
        "(regression; one output). Metrics are those of `fedloom run` (default: the config "
        "dataset's test split without --model, none with --model)",
    )
    server.add_argument(
        "--strategy",
        metavar="MODULE:FUNCTION",
        help="use your own strategy: a factory returning a fedloom Strategy (it takes no "
        "arguments or the run's Config); clients must run any task kinds it adds "
        "(default: the config's strategy section)",
    )
    server.add_argument("-q", "--quiet", action="store_true", help="no progress lines or table")
    add_dashboard_args(server)
    server.set_defaults(func=cmd_server)

    client = sub.add_parser("client", help="take part in a deployment with local data")
    client.add_argument("--server", required=True, help="HOST:PORT of the fedloom server")
    client.add_argument("--name", required=True, help="client name (its certificate's name)")
    client.add_argument("--certs", help="folder with ca.crt and NAME.crt/NAME.key or NAME.token")
    client.add_argument("--token", help="enrolment token (default: CERTS/NAME.token if present)")
    client.add_argument("--insecure", action="store_true", help="plaintext gRPC (trusted networks)")
    client.add_argument("--csv", help="local data: a CSV file")
    client.add_argument("--target", default="target", help="target column of --csv")
    client.add_argument("--dataset", help="demo data: a built-in dataset, with --partition")
    client.add_argument("--partition", help="demo data: this client's partition i/N (0-based)")
    client.add_argument("--app", help="module:function returning your own Client")
    client.add_argument(
        "--give-up-after",
        type=float,
        default=600.0,
        help="exit after the server is unreachable this many seconds",
    )
    client.add_argument(
        "--threads",
        type=int,
        help="torch threads for local training (default: torch's choice; use 1 when several "
        "clients share a machine)",
    )
    client.add_argument(
        "--state",
        metavar="DIR",
        help="keep this client's state (SCAFFOLD's control variate, error-feedback residuals) in "
        "DIR/client-state.safetensors: loaded at start, written after every task that changes "
        "it, so a restarted client goes on where it stopped; one folder per client and run "
        "(default: memory only, lost when the process exits)",
    )
    client.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    client.set_defaults(func=cmd_client)
