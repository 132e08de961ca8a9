"""The ``fedloom`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedloom import __version__
from fedloom.cli.dashboard import add_dashboard_args
from fedloom.cli.dashboard import register as register_dashboard
from fedloom.cli.deploy import register as register_deploy
from fedloom.cli.privacy import register as register_privacy
from fedloom.errors import ConfigError, FedloomError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (default: the built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; the value is parsed as YAML "
        "(e.g. --set model.hidden=[64,64]); repeatable",
    )
    p.add_argument("--data-dir", help="folder holding dataset files (sets dataset.data_dir)")


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fedloom.config import load_config

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"dataset.data_dir={args.data_dir}")
    return load_config(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedloom.simulation import default_out_dir, run

    cfg = _load(args)
    out = Path(args.out) if args.out else default_out_dir()
    if args.baselines:
        if args.dashboard is not None:
            raise ConfigError(
                "--dashboard watches one run and --baselines runs three; drop one of them"
            )
        from fedloom.baselines import parse_baselines, run_with_baselines

        run_with_baselines(cfg, out, parse_baselines(args.baselines), quiet=args.quiet)
        return 0
    if args.dashboard is None:
        run(cfg, out, quiet=args.quiet)
        return 0
    from fedloom.cli.dashboard import live_dashboard

    config = cfg.model_dump(mode="json")
    with live_dashboard(args, out, config, rounds=cfg.rounds, mode="simulation") as feed:
        run(cfg, out, quiet=args.quiet, listeners=[feed])
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedloom.data import format_label_distribution, label_distribution, plot_label_distribution
    from fedloom.data.federated import load_clients

    ds, clients = load_clients(_load(args))  # the split a run makes, without building models
    if ds.task != "classification":
        sizes = [len(c.train) for c in clients]
        print(f"{len(sizes)} clients; sizes min {min(sizes)}, max {max(sizes)}")
        return 0
    counts = label_distribution(ds.y_train, [c.train for c in clients], ds.num_classes)
    print(format_label_distribution(counts, max_rows=args.rows))
    if args.plot:
        plot_label_distribution(counts, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from fedloom.tracking.report import format_cell, write_report

    out = Path(args.out)
    columns, rows = write_report([Path(p) for p in args.runs], out)
    short = {
        "bytes_up": "up",
        "bytes_down": "down",
        "bytes_total": "up+down",
        "wall_seconds": "time",
    }
    table = Table(title="fedloom report", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in columns:
        table.add_column(short.get(c, c), justify="left" if c == "run" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(format_cell(c, row[c]) for c in columns))
    console = Console()
    if not console.is_terminal:  # a log or a pipe: no need to squeeze into 80 columns
        console = Console(width=200)
    console.print(table)
    print(f"wrote {out / 'report.csv'}, {out / 'report.png'} and {out / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedloom", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedloom {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a federated simulation")
    _add_config_args(run)
    run.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or table")
    add_dashboard_args(run)
    run.add_argument(
        "--baselines",
        metavar="KINDS",
        help="also train local-only and/or centralised baselines with the same budget "
        "(local,central); summary.json gets them under 'baselines'",
    )
    run.set_defaults(func=cmd_run)

    part = sub.add_parser("partition", help="show the label distribution per client")
    _add_config_args(part)
    part.add_argument("--plot", help="also write a stacked bar chart PNG here")
    part.add_argument("--rows", type=int, default=20, help="clients to list in full")
    part.set_defaults(func=cmd_partition)
    report = sub.add_parser("report", help="compare runs: table, overlay plots, one HTML file")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="results folders to compare")
    report.add_argument("--out", default="report", help="where to write them (default: report)")
    report.set_defaults(func=cmd_report)
    register_deploy(sub)  # certs, server, client
    register_dashboard(sub)
    register_privacy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except FedloomError as exc:
        print(f"fedloom: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedloom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
