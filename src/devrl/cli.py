"""Command line: `devrl train | sweep | eval | export | llc | figure | verify`. Every bad value
exits with status 2 and a message naming the parameter and the allowed values, before anything is
written."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
from pathlib import Path

from devrl.core.base import ConfigError
from devrl.core.config import (
    FIELD_HELP,
    SCALE_SEEDS,
    SCALES,
    TrainConfig,
    coerce,
    config_from_dict,
    field_types,
    loads_strict,
    typed,
)


def _add_config_flags(parser: argparse.ArgumentParser, many: bool = False) -> None:
    group = parser.add_argument_group(
        "hyperparameters (override the scale profile; defaults shown are the cpu scale"
        + ("; several values make an axis of the grid)" if many else ")"))
    defaults = TrainConfig()
    for name in field_types():
        if name == "seed":
            continue
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                           metavar="VALUE", nargs="+" if many else None,
                           help=f"{FIELD_HELP[name]} (cpu default: {getattr(defaults, name)})")


def _add_execution_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution (Ray)")
    group.add_argument("--address", default=None,
                       help="join the Ray cluster at this address (e.g. 10.0.0.1:6379 from "
                            "`ray start --head`); default: start a local Ray instance")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs of the local Ray instance (default: every core this process "
                            "may use)")
    group.add_argument("--threads-per-run", type=int, default=1,
                       help="CPU cores (XLA threads) per run where there is no GPU; runs at "
                            "once = CPUs // this (default: 1)")
    group.add_argument("--runs-per-gpu", type=int, default=None,
                       help="runs sharing one GPU (default: 1 where Ray sees GPUs, else the "
                            "CPUs); refused where Ray sees no GPU")
    group.add_argument("--stall-timeout", type=float, default=900.0,
                       help="seconds without a heartbeat before a run is killed and resumed "
                            "(default: 900)")
    group.add_argument("--max-restarts", type=int, default=3,
                       help="restarts per run before giving up (default: 3)")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devrl", description="Train and evaluate PPO agents on Craftax-Classic.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train one or more seeds of one config (a sweep over seeds)",
        description="Train PPO seeds of one config into OUT/<config hash>/seed_N, as a sweep "
                    "over seeds (see `devrl sweep`). Rerunning the same command resumes every "
                    "seed from its last complete checkpoint.")
    train.add_argument("--scale", default="cpu",
                       help=f"profile of defaults: {' | '.join(SCALES)} (default: cpu)")
    train.add_argument("--seeds", nargs="+", type=int, default=None,
                       help="seeds to train (default: the scale's seeds, "
                            + ", ".join(f"{k}: {list(v)}" for k, v in SCALE_SEEDS.items()) + ")")
    train.add_argument("--out", required=True, help="output (sweep) directory")
    train.add_argument("--config", default=None,
                       help="JSON file of hyperparameters (flags below override it)")
    _add_execution_flags(train)
    _add_config_flags(train)

    sweep = sub.add_parser(
        "sweep", help="train a grid of configs x seeds as Ray tasks; `sweep status DIR`",
        description="Train every (config, seed) of a grid into OUT/<config hash>/seed_N as Ray "
                    "tasks, on a local Ray instance or (--address) a cluster. The grid comes "
                    "from SPEC (YAML or JSON with keys scale, grid, seeds) and flags; a flag "
                    "given several values is an axis. Rerunning the same command skips "
                    "finished runs and resumes interrupted ones. `devrl sweep status DIR` shows "
                    "where a sweep stands.")
    sweep.add_argument("spec", nargs="?", default=None,
                       help="sweep file, e.g. {scale: cpu, grid: {memory: [0, 16]}, seeds: [0, 1]}")
    sweep.add_argument("--out", required=True, help="sweep directory")
    sweep.add_argument("--scale", default=None,
                       help=f"profile of defaults: {' | '.join(SCALES)} (default: the file's, "
                            "else cpu)")
    sweep.add_argument("--seeds", nargs="+", type=int, default=None,
                       help="seeds of every grid point (default: the file's, else the scale's)")
    _add_execution_flags(sweep)
    _add_config_flags(sweep, many=True)

    status = sub.add_parser("sweep-status", help=argparse.SUPPRESS)
    status.add_argument("sweep_dir")

    one = sub.add_parser("train-one", help=argparse.SUPPRESS)
    one.add_argument("--out", required=True)
    one.add_argument("--config-json", required=True)
    one.add_argument("--parent-pid", type=int, default=None)
    one.add_argument("--cpus", default=None)

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

    digest = sub.add_parser(
        "digest", help="measure the finished runs of the reward sweep into data/",
        description="For each finished run of the reward sweep in RUNS (default: "
                    "DEVRL_RUNS/reward-<scale>) without an up-to-date digest, evaluate and "
                    "measure it and write its compact digest to DEVRL_DATA/reward-runs-<scale>/"
                    "<reward>-seed_<N>/ (its own manifest). Commit the digests: a study built "
                    "from them does not retrain those runs, so a grid may span machines and "
                    "sessions. Unfinished runs are left alone. With --tables, then rebuild the "
                    "study's data set (DEVRL_DATA/diversity-<scale>) from every digest there, "
                    "training nothing.")
    digest.add_argument("--scale", default="cpu", help=f"{' | '.join(SCALES)} (default: cpu)")
    digest.add_argument("--runs", default=None, help="sweep directory of the reward grid")
    digest.add_argument("--tables", action="store_true",
                        help="also rebuild the study's tables from the digests")

    figure = sub.add_parser(
        "figure", help="rerun one figure notebook with papermill",
        description="Execute notebooks/NAME.md with papermill (kernel 'devrl', cwd notebooks/) "
                    "into one output folder: the executed notebook and the figure's exports. "
                    "With the notebook's default parameters that is the book's build "
                    "(_build/papermill/ and _build/figures/); with others, a folder of its own "
                    "under DEVRL_RUNS/../figures/ (or --out). Parameter values are checked "
                    "against the notebook and its data before a kernel starts. With -p "
                    "recompute True the figure's data is regenerated from scratch (training "
                    "included) into data/.")
    figure.add_argument("name", help="notebook name (a file in notebooks/ without .md)")
    figure.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"),
                        help="set a parameter; VALUE is a Python literal (3, True, [0, 1], "
                             "None) or a plain string")
    figure.add_argument("--timeout", type=float, default=None,
                        help=f"seconds each cell may run (default: {FIGURE_TIMEOUT:g}, or "
                             f"{RECOMPUTE_TIMEOUT:g} with -p recompute True, since a recompute "
                             "at the cpu scale can train and measure for hours)")
    figure.add_argument("--list", action="store_true",
                        help="print the notebook's parameters and exit")
    figure.add_argument("--out", default=None,
                        help="output folder for the executed notebook and the exports")

    verify = sub.add_parser(
        "verify", help="check folders against their manifests",
        description="Check every manifest.json below PATHS: each problem (malformed manifest, "
                    "missing, changed or unlisted file, or a run interrupted mid-checkpoint) is "
                    "reported per manifest; exit status 1 if there is any. Under each manifest "
                    "whose files check out, doubts about its provenance are listed (made from a "
                    "dirty tree, from a commit that lacks or holds another version of a module "
                    "that made it, or, for manifests older than source records, landed in git "
                    "together with code changed after the commit it names); they do not change "
                    "the exit status.")
    verify.add_argument("paths", nargs="+", help="directories holding a manifest.json (searched "
                                                 "recursively)")
    verify.add_argument("--all-provenance", action="store_true",
                        help="also list manifests that record no source modules (written before "
                             "devrl recorded them) where nothing else is in doubt")
    return parser


def _config_file(path_text: str | None) -> dict:
    if not path_text:
        return {}
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"config={path_text!r} is not allowed: must be an existing JSON file")
    values = loads_strict(path.read_text(), f"config={path_text!r}")
    if not isinstance(values, dict):
        raise ConfigError(f"config={path_text!r} is not allowed: must hold a JSON object of "
                          "parameter names to values")
    if "seed" in values:
        raise ConfigError(f"config={path_text!r} is not allowed: it sets 'seed', which a config "
                          "file does not choose; give the seeds with --seeds (a run's own "
                          "config.json: remove its 'seed' line)")
    return typed(values)  # the same type checks as flags: exit 2, the parameter named


def _flag_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    for name in field_types():
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = ([coerce(name, v) for v in value] if isinstance(value, list)
                               else coerce(name, value))
    return overrides


def _positive(name: str, value: float) -> None:
    if value is None or not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{name}={value!r} is not allowed: must be a finite number >= 1")


def _execution(args: argparse.Namespace) -> dict:
    _positive("threads_per_run", args.threads_per_run)
    if args.runs_per_gpu is not None:
        _positive("runs_per_gpu", args.runs_per_gpu)
    _positive("stall_timeout", args.stall_timeout)
    if args.num_cpus is not None:
        _positive("num_cpus", args.num_cpus)
    if args.max_restarts < 0:
        raise ConfigError(f"max_restarts={args.max_restarts} is not allowed: must be >= 0")
    if args.address is None:  # a local Ray instance: refuse what it could never schedule
        cores = args.num_cpus or len(os.sched_getaffinity(0))
        if args.threads_per_run > cores:
            raise ConfigError(f"threads_per_run={args.threads_per_run} is not allowed: the local "
                              f"Ray instance has {cores} CPU(s), so a run may use at most "
                              f"{cores}; a run asking for more would wait forever")
    return {"address": args.address, "num_cpus": args.num_cpus,
            "threads_per_run": args.threads_per_run, "runs_per_gpu": args.runs_per_gpu,
            "stall_timeout": args.stall_timeout, "max_restarts": args.max_restarts,
            "show_progress": not args.quiet}


def cmd_train(args: argparse.Namespace) -> int:
    from devrl.runs.sweep import make_spec, run_sweep

    overrides = {**_config_file(args.config), **_flag_overrides(args)}
    execution = _execution(args)
    spec = make_spec(args.scale, {k: [v] for k, v in overrides.items()}, args.seeds)
    return run_sweep(spec, Path(args.out), **execution)


def cmd_sweep(args: argparse.Namespace) -> int:
    from devrl.runs.sweep import load_spec, make_spec, run_sweep

    execution = _execution(args)
    base = load_spec(Path(args.spec)) if args.spec else None
    scale = args.scale or (base.scale if base else "cpu")
    grid = {k: list(v) for k, v in base.grid.items()} if base else {}
    grid.update(_flag_overrides(args))
    seeds = args.seeds if args.seeds is not None else (list(base.seeds) if base else None)
    spec = make_spec(scale, grid, seeds)
    return run_sweep(spec, Path(args.out), **execution)


def cmd_sweep_status(args: argparse.Namespace) -> int:
    from devrl.runs.sweep import format_status, sweep_status

    rows = sweep_status(Path(args.sweep_dir))
    print(format_status(rows))
    return 0


def cmd_train_one(args: argparse.Namespace) -> int:
    from devrl.runs.sweep import become_trainer

    become_trainer(args.parent_pid, args.cpus)  # before JAX initialises
    from devrl.runs.training import train

    config = config_from_dict(loads_strict(args.config_json, "config-json"))

    def log(info: dict) -> None:
        print(json.dumps(info), flush=True)

    train(config, Path(args.out), progress=log)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from devrl.measures.behaviour import evaluate_runs

    _positive("episodes", args.episodes)
    _positive("max_steps", args.max_steps)
    _positive("probe_per_context", args.probe_per_context)
    evaluate_runs(Path(args.run), episodes=args.episodes, max_steps=args.max_steps,
                  probe_per_context=args.probe_per_context, show_progress=not args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from devrl.runs.export import export_runs

    _positive("checkpoints", args.checkpoints)
    print(export_runs([Path(p) for p in args.run], Path(args.out),
                      checkpoints=args.checkpoints))
    return 0


def cmd_llc(args: argparse.Namespace) -> int:
    from devrl.measures.policy_llc import export_llc

    if args.scale not in SCALES:
        raise ConfigError(f"scale={args.scale!r} is not allowed: must be one of "
                          f"{', '.join(SCALES)}")

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, flush=True)

    print(export_llc([Path(p) for p in args.run], Path(args.out), args.scale, progress))
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    from devrl.datasets import craftax_data, runs_root
    from devrl.studies.diversity import digest_finished

    if args.scale not in SCALES:
        raise ConfigError(f"scale={args.scale!r} is not allowed: must be one of "
                          f"{', '.join(SCALES)}")
    runs = Path(args.runs) if args.runs else runs_root() / f"reward-{args.scale}"
    status = digest_finished(args.scale, runs, craftax_data(args.scale))
    for name, state in status.items():
        print(f"{name:24s} {state}")
    if args.tables:
        from devrl.studies.diversity import diversity_data

        data = diversity_data(args.scale, recompute=True, train=False)
        print(f"{data.path}: {len(data.manifest['held'])} of {len(data.manifest['planned'])} "
              "planned runs")
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from devrl.book.notebooks import check_overrides, notebook_path, read_parameters, run_figure

    if args.list:
        for parameter in read_parameters(notebook_path(args.name)).values():
            print(parameter.describe())
        return 0
    values = check_overrides(args.name, [tuple(pair) for pair in args.parameter])
    timeout = figure_timeout(args.timeout, values)
    import papermill

    try:
        executed = run_figure(args.name, values, timeout=timeout,
                              output_dir=Path(args.out) if args.out else None)
    except papermill.PapermillExecutionError as error:
        print(f"devrl figure: the notebook {args.name!r} failed in cell {error.exec_count}: "
              f"{error.ename}: {error.evalue}", file=sys.stderr)
        return 1
    except TimeoutError:  # nbclient's CellTimeoutError; an OSError, but not the disk's
        print(f"devrl figure: the notebook {args.name!r} had a cell still running after "
              f"--timeout={timeout:g} seconds, so it was stopped; rerun with a larger --timeout "
              "(a recompute resumes from what its runs kept)", file=sys.stderr)
        return 1
    print(executed)
    return 0


FIGURE_TIMEOUT = 3600.0  # seconds a cell of `devrl figure` may run, drawing from the data
RECOMPUTE_TIMEOUT = 86400.0  # ... and with recompute=True, which may train and measure


def figure_timeout(timeout: float | None, values: dict) -> float:
    """The per-cell timeout of `devrl figure`: `timeout` if given (checked positive), else the
    default for what the run does (RECOMPUTE_TIMEOUT when recompute is True)."""
    if timeout is not None:
        _positive("timeout", timeout)
        return timeout
    return RECOMPUTE_TIMEOUT if values.get("recompute") is True else FIGURE_TIMEOUT


def cmd_verify(args: argparse.Namespace) -> int:
    from devrl.runs.rundir import provenance_problems, verify_manifest

    manifests = []
    for path in args.paths:
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(f"paths={path!r} is not allowed: must be an existing directory")
        manifests += sorted(root.rglob("manifest.json"))
    if not manifests:
        raise ConfigError(f"paths={args.paths} is not allowed: no manifest.json found below them")
    failed = 0
    for manifest in manifests:
        found = verify_manifest(manifest.parent)
        doubts = [p for p in provenance_problems(manifest.parent) if p.kind != "unrecorded"
                  or args.all_provenance]
        if not found:
            print(f"ok          {manifest.parent}")
            for doubt in doubts:
                print(f"  provenance {doubt.kind}: {doubt}")
            continue
        if all(p.kind == "in-progress" for p in found):  # a live writer: not a failure
            print(f"in progress {manifest.parent}: being written; verify it when idle")
            continue
        failed += 1
        if all(p.kind == "interrupted" for p in found):
            print(f"interrupted {manifest.parent}: rerun to resume")
            continue
        print(f"FAIL        {manifest.parent}")
        for problem in found:
            print(f"  {problem.kind}: {problem}")
    return 1 if failed else 0


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "sweep-status": cmd_sweep_status,
            "train-one": cmd_train_one, "eval": cmd_eval, "export": cmd_export, "llc": cmd_llc,
            "digest": cmd_digest, "figure": cmd_figure, "verify": cmd_verify}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["sweep", "status"]:  # `devrl sweep status DIR`
        argv = ["sweep-status", *argv[2:]]
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return COMMANDS[args.command](args)
    except Terminated:
        print(f"devrl {args.command}: stopped by SIGTERM; rerun the same command to resume",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except ConfigError as error:
        print(f"devrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"devrl {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except OSError as error:  # a full, read-only or vanished disk: one line, no traceback
        print(f"devrl {args.command}: error: {disk_error(error)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, so that `finally` blocks (Ray's
    shutdown, lock release) run and files written atomically stay whole."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def disk_error(error: OSError) -> str:
    """An OSError as one line naming the path (if it has one) and the cause."""
    where = error.filename if error.filename is not None else "the disk"
    cause = error.strerror or str(error) or type(error).__name__
    hint = (": free some space, then rerun the same command to resume"
            if error.errno == errno.ENOSPC else "")
    return f"{where}: {cause}{hint}"


if __name__ == "__main__":
    sys.exit(main())
