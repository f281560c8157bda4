"""Command line: `devrl train | eval | export | llc | figure | verify`. Every bad value exits with status 2 and a message
naming the parameter and the allowed values, before anything is written."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devrl.config import (
    FIELD_HELP,
    SCALE_SEEDS,
    SCALES,
    ConfigError,
    TrainConfig,
    coerce,
    config_from_dict,
    field_types,
    make_config,
)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "hyperparameters (override the scale profile; defaults shown are the cpu scale)")
    defaults = TrainConfig()
    for name in field_types():
        if name == "seed":
            continue
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                           metavar="VALUE",
                           help=f"{FIELD_HELP[name]} (cpu default: {getattr(defaults, name)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devrl", description="Train and evaluate PPO agents on Craftax-Classic.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train one or more seeds (one process each, under a watchdog)",
        description="Train PPO seeds into OUT/seed_N. Rerunning the same command resumes every "
                    "seed from its last complete checkpoint.")
    train.add_argument("--scale", default="cpu",
                       help=f"profile of defaults: {' | '.join(SCALES)} (default: cpu)")
    train.add_argument("--seeds", nargs="+", type=int, default=None,
                       help="seeds to train (default: the scale's seeds, "
                            + ", ".join(f"{k}: {list(v)}" for k, v in SCALE_SEEDS.items()) + ")")
    train.add_argument("--out", required=True, help="output directory (one subfolder per seed)")
    train.add_argument("--config", default=None,
                       help="JSON file of hyperparameters (flags below override it)")
    train.add_argument("--jobs", type=int, default=1,
                       help="seeds trained at once, one process each (default: 1)")
    train.add_argument("--threads-per-run", type=int, default=None,
                       help="XLA CPU threads per process (default: all; use 1 with --jobs 2)")
    train.add_argument("--stall-timeout", type=float, default=900.0,
                       help="seconds without a heartbeat before a run is killed and resumed "
                            "(default: 900)")
    train.add_argument("--max-restarts", type=int, default=3,
                       help="restarts per seed before giving up (default: 3)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(train)

    one = sub.add_parser("train-one", help=argparse.SUPPRESS)
    one.add_argument("--out", required=True)
    one.add_argument("--config-json", required=True)

    ev = sub.add_parser(
        "eval", help="behaviour of every checkpoint: episodes and probe-set policy tables",
        description="Evaluate every checkpoint of RUN (a run directory, or a folder of seed_N "
                    "run directories) on fixed-seed episodes and on a fixed probe set of states.")
    ev.add_argument("run", help="run directory or folder of seed_N run directories")
    ev.add_argument("--episodes", type=int, default=64,
                    help="fixed-seed episodes per checkpoint (default: 64)")
    ev.add_argument("--max-steps", type=int, default=3000,
                    help="episode step cap; longer episodes are marked truncated (default: 3000)")
    ev.add_argument("--probe-per-context", type=int, default=512,
                    help="probe states per plant context (default: 512)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")

    export = sub.add_parser(
        "export", help="copy evaluated runs into a compact data/ folder with a manifest",
        description="Write metrics, behaviour tables, probe sets and a few float16 actor "
                    "checkpoints of every seed under RUN into OUT (replaced atomically).")
    export.add_argument("run", nargs="+",
                        help="run directories or folders of seed_N run directories")
    export.add_argument("--out", required=True, help="data folder to write, e.g. data/craftax-cpu")
    export.add_argument("--checkpoints", type=int, default=8,
                        help="actor checkpoints kept per seed, log-spaced (default: 8)")

    llc = sub.add_parser(
        "llc", help="policy LLC and probe outputs of every checkpoint into a data folder",
        description="Calibrate the SGLD step size on the first seed's run, then estimate the "
                    "policy's local learning coefficient at log-spaced checkpoints of every run "
                    "(per layer and per plant context at fewer of them) and store every "
                    "checkpoint's action log-probabilities on the probe set; write the tables "
                    "into OUT (replaced atomically). Finished parts are kept under RUN/llc/, so "
                    "rerunning the same command resumes.")
    llc.add_argument("run", nargs="+",
                     help="evaluated run directories or folders of seed_N run directories")
    llc.add_argument("--scale", default="cpu",
                     help=f"sampler settings: {' | '.join(SCALES)} (default: cpu)")
    llc.add_argument("--out", required=True, help="data folder to write, e.g. data/llc-cpu")
    llc.add_argument("--quiet", action="store_true", help="no progress lines")

    figure = sub.add_parser(
        "figure", help="rerun one figure notebook with papermill",
        description="Execute notebooks/NAME.md with papermill (kernel 'devrl', cwd notebooks/) "
                    "and write the executed notebook to _build/papermill/NAME.ipynb and the "
                    "figure to _build/figures/. With -p recompute True the figure's data is "
                    "regenerated from scratch (training included) into data/.")
    figure.add_argument("name", help="notebook name (a file in notebooks/ without .md)")
    figure.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"),
                        help="set a parameter; VALUE is a Python literal (3, True, [0, 1], "
                             "None) or a plain string")
    figure.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds each cell may run (default: 3600)")
    figure.add_argument("--list", action="store_true",
                        help="print the notebook's parameters and exit")

    verify = sub.add_parser("verify", help="recompute the checksums of manifests")
    verify.add_argument("paths", nargs="+", help="directories holding a manifest.json (searched "
                                                 "recursively)")
    return parser


def _config_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config={args.config!r} is not allowed: must be an existing "
                              "JSON file")
        try:
            overrides.update(json.loads(path.read_text()))
        except ValueError as error:
            raise ConfigError(f"config={args.config!r} is not valid JSON: {error}") from None
        overrides.pop("seed", None)
    for name in field_types():
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = coerce(name, value)
    return overrides


def _positive(name: str, value: float) -> None:
    if value is None or value < 1:
        raise ConfigError(f"{name}={value!r} is not allowed: must be >= 1")


def cmd_train(args: argparse.Namespace) -> int:
    from devrl.launch import train_seeds

    overrides = _config_overrides(args)
    if args.scale not in SCALES:
        raise ConfigError(f"scale={args.scale!r} is not allowed: must be one of "
                          f"{', '.join(SCALES)}")
    _positive("jobs", args.jobs)
    _positive("stall_timeout", args.stall_timeout)
    if args.threads_per_run is not None:
        _positive("threads_per_run", args.threads_per_run)
    if args.max_restarts < 0:
        raise ConfigError(f"max_restarts={args.max_restarts} is not allowed: must be >= 0")
    seeds = args.seeds if args.seeds is not None else list(SCALE_SEEDS[args.scale])
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} is not allowed: seeds must be distinct")
    configs = [make_config(args.scale, **overrides, seed=seed) for seed in seeds]
    return train_seeds(configs, Path(args.out), jobs=args.jobs, stall_timeout=args.stall_timeout,
                       max_restarts=args.max_restarts, threads_per_run=args.threads_per_run,
                       show_progress=not args.quiet)


def cmd_train_one(args: argparse.Namespace) -> int:
    from devrl.runs import train

    config = config_from_dict(json.loads(args.config_json))

    def log(info: dict) -> None:
        print(json.dumps(info), flush=True)

    train(config, Path(args.out), progress=log)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from devrl.behaviour import evaluate_runs

    _positive("episodes", args.episodes)
    _positive("max_steps", args.max_steps)
    _positive("probe_per_context", args.probe_per_context)
    evaluate_runs(Path(args.run), episodes=args.episodes, max_steps=args.max_steps,
                  probe_per_context=args.probe_per_context, show_progress=not args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from devrl.export import export_runs

    _positive("checkpoints", args.checkpoints)
    print(export_runs([Path(p) for p in args.run], Path(args.out),
                      checkpoints=args.checkpoints))
    return 0


def cmd_llc(args: argparse.Namespace) -> int:
    from devrl.policy_llc import export_llc

    if args.scale not in SCALES:
        raise ConfigError(f"scale={args.scale!r} is not allowed: must be one of "
                          f"{', '.join(SCALES)}")

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, flush=True)

    print(export_llc([Path(p) for p in args.run], Path(args.out), args.scale, progress))
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from devrl.notebooks import check_overrides, notebook_path, read_parameters, run_figure

    if args.list:
        for parameter in read_parameters(notebook_path(args.name)).values():
            print(parameter.describe())
        return 0
    _positive("timeout", args.timeout)
    values = check_overrides(args.name, [tuple(pair) for pair in args.parameter])
    import papermill

    try:
        executed = run_figure(args.name, values, timeout=args.timeout)
    except papermill.PapermillExecutionError as error:
        print(f"devrl figure: the notebook {args.name!r} failed in cell {error.exec_count}: "
              f"{error.ename}: {error.evalue}", file=sys.stderr)
        return 1
    print(executed)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from devrl.runs import verify_manifest

    manifests = []
    for path in args.paths:
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(f"paths={path!r} is not allowed: must be an existing directory")
        manifests += sorted(root.rglob("manifest.json"))
    if not manifests:
        raise ConfigError(f"paths={args.paths} is not allowed: no manifest.json found below them")
    problems = []
    for manifest in manifests:
        found = verify_manifest(manifest.parent)
        problems += found
        print(f"{'FAIL' if found else 'ok  '} {manifest.parent}")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


COMMANDS = {"train": cmd_train, "train-one": cmd_train_one, "eval": cmd_eval,
            "export": cmd_export, "llc": cmd_llc, "figure": cmd_figure, "verify": cmd_verify}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"devrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"devrl {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
