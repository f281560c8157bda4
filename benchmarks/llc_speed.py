"""Wall time of one LLC estimate: devrl.measures.llc.estimate_llc (JAX) against devinterp 1.3.2
(PyTorch).

Both sides sample the same deep linear network (devrl.measures.known; default widths (16, 16, 16,
16), true rank 4: d = 768 weights, known λ = 104) at the same w* (full-batch Adam from the true
parameter, as in tests/test_llc.py) on the same n = 3000 data points, with the same SGLD update

    w ← w − (ε/2) · (nβ ∇L_batch(w) + γ (w − w*)) + √ε · ξ,    ξ ~ N(0, I),

(devinterp.optim.sgld.SGLD with lr = ε, nbeta = nβ, localization = γ), the same loss
L = mean over points of ½‖y − x W_1 ⋯ W_L‖² (not torch's MSE, which has no ½ and averages over
outputs too), minibatches of the same size drawn with replacement, the same chains, steps and
burn-in, and the same draw loss: the loss of each step's minibatch at the weights before the step
(devinterp's LLCEstimator records the loss its sampler backpropagates; devrl's draw_loss
"minibatch"). λ̂ = nβ (mean draw loss − L_n(w*)) with L_n(w*) over all n points on both sides
(devinterp's default, a few minibatches, is replaced by passing it as init_loss).

devinterp runs in its own interpreter (default ~/bench-venv/bin/python: a venv with CPU torch and
devinterp==1.3.2), started as a subprocess of this script with `--side devinterp`; the problem is
handed over in a temporary .npz. Both sides first check that their loss and gradient agree at a
perturbed point. torch gets as many threads as JAX/XLA uses cores (all of them, by default).
Setting up that venv (tested with Python 3.11.7, torch 2.13.0+cpu, devinterp 1.3.2, numpy 2.4.6,
pandas 3.1.1):

    python3 -m venv ~/bench-venv
    ~/bench-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    ~/bench-venv/bin/pip install devinterp==1.3.2 numpy pandas

Each side: the first call is timed on its own (for JAX it includes compiling), then the median of
`--repeats` further calls. Times are wall times with the results on the host. Run on an otherwise
idle machine (the two sides run one after the other, never together): torch's OpenMP threads stall
when another process holds the cores (on a busy 2-core machine a 500-row gather took 12 ms with 2
threads, 30 µs with 1), so timings taken under load say nothing.

    .venv/bin/python benchmarks/llc_speed.py [--repeats N] [--steps N]

Prints a table and writes benchmarks/results/llc_speed.json (`--json` to write elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "llc_speed.json"
DEVINTERP_PYTHON = Path.home() / "bench-venv" / "bin" / "python"
DEVINTERP_VERSION = "1.3.2"
LOADERS = ("batched", "per-item")
PROBLEM_SEED = 0
PERTURBATION = 0.05  # scale of the random offset from w* at which the two losses are compared


# ---------------------------------------------------------------------------------------------
# Command line.


def _checked(kind: type, ok, allowed: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {allowed}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {allowed}")
        return value

    return parse


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed: need at least two comma-separated positive integers "
            "(input, hidden..., output)")
    return widths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    positive_int = _checked(int, lambda v: v >= 1, "must be an integer >= 1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed estimates per side after the first call (median reported)")
    parser.add_argument("--steps", type=_checked(int, lambda v: v >= 2, "must be an integer >= 2"),
                        default=2000, help="SGLD steps per chain, burn-in included")
    parser.add_argument("--burnin", type=_checked(int, lambda v: v >= 0, "must be an integer >= 0"),
                        default=None, help="burn-in steps (default: steps // 10)")
    parser.add_argument("--chains", type=positive_int, default=4)
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--num-data", type=_checked(int, lambda v: v >= 2,
                                                    "must be an integer >= 2"), default=3000)
    parser.add_argument("--widths", type=_widths, default=(16, 16, 16, 16),
                        help="deep linear network widths, comma-separated (default 16,16,16,16)")
    parser.add_argument("--rank", type=_checked(int, lambda v: v >= 0, "must be an integer >= 0"),
                        default=4, help="rank of the true product of the layers")
    finite_positive = _checked(float, lambda v: math.isfinite(v) and v > 0,
                               "must be a finite number > 0")
    parser.add_argument("--step-size", type=finite_positive, default=6e-5, help="ε")
    parser.add_argument("--localization", type=_checked(
        float, lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0"),
        default=1.0, help="γ")
    parser.add_argument("--nbeta", type=finite_positive, default=None,
                        help="nβ (default n / log n)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: the cores JAX uses, all available)")
    parser.add_argument("--loader", choices=LOADERS, default="batched",
                        help="devinterp's DataLoader: one indexing op per minibatch (batched) or "
                             "torch's default per-point fetch and collate (per-item)")
    parser.add_argument("--devinterp-python", type=Path, default=DEVINTERP_PYTHON,
                        help="interpreter of the venv holding torch and devinterp==1.3.2")
    parser.add_argument("--json", type=Path, default=OUT, help="where to write the results")
    parser.add_argument("--side", choices=("both", "devinterp"), default="both",
                        help=argparse.SUPPRESS)  # internal: the devinterp subprocess
    parser.add_argument("--problem", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "devinterp":
        if args.problem is None or args.json is OUT:
            parser.error("--side devinterp needs --problem and --json (it is run by this script)")
        return args
    if args.burnin is None:
        args.burnin = args.steps // 10
    if args.burnin >= args.steps:
        parser.error(f"argument --burnin: {args.burnin} is not allowed: must be < --steps="
                     f"{args.steps} (at least one draw)")
    if args.batch_size > args.num_data:
        parser.error(f"argument --batch-size: {args.batch_size} is not allowed: must be at most "
                     f"--num-data={args.num_data}")
    if args.rank > min(args.widths):
        parser.error(f"argument --rank: {args.rank} is not allowed: must be at most the smallest "
                     f"width, {min(args.widths)}")
    if args.nbeta is None:
        args.nbeta = args.num_data / math.log(args.num_data)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0))
    if not (args.devinterp_python.is_file() and os.access(args.devinterp_python, os.X_OK)):
        parser.error(f"argument --devinterp-python: {str(args.devinterp_python)!r} is not "
                     "allowed: no such executable (create the venv: see the module docstring)")
    return args


# ---------------------------------------------------------------------------------------------
# The problem and the devrl (JAX) side.


def make_problem(args: argparse.Namespace) -> dict:
    """Data, w0, w* and a perturbed point for the loss check, all float32 numpy arrays."""
    import jax

    from devrl.measures import known

    truth_key, data_key, check_key = jax.random.split(jax.random.PRNGKey(PROBLEM_SEED), 3)
    w0 = known.dln_true_params(truth_key, args.widths, args.rank)
    x, y = known.sample_regression_data(data_key, known.dln_apply, w0, args.num_data,
                                        args.widths[0])
    w_star = known.train_to_minimum(known.dln_loss, w0, (x, y), num_steps=3000,
                                    learning_rate=1e-3)  # as tests/test_llc.py
    offsets = jax.random.split(check_key, len(w_star))
    w_check = tuple(w + PERTURBATION * jax.random.normal(k, w.shape)
                    for w, k in zip(w_star, offsets, strict=True))
    return {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.float32),
            "w_star": [np.asarray(w, np.float32) for w in w_star],
            "w_check": [np.asarray(w, np.float32) for w in w_check]}


def settings_of(args: argparse.Namespace) -> dict:
    return {"step_size": args.step_size, "nbeta": args.nbeta, "localization": args.localization,
            "num_steps": args.steps, "num_burnin": args.burnin,
            "num_draws": args.steps - args.burnin, "num_chains": args.chains,
            "batch_size": args.batch_size, "num_data": args.num_data, "repeats": args.repeats,
            "threads": args.threads, "loader": args.loader}


def loss_check_devrl(problem: dict) -> dict:
    import jax

    from devrl.measures import known

    data = (problem["x"], problem["y"])
    w_check = tuple(problem["w_check"])
    loss, grads = jax.value_and_grad(known.dln_loss)(w_check, data)
    return {"loss_w_star": float(known.dln_loss(tuple(problem["w_star"]), data)),
            "loss_w_check": float(loss), "grad_w_check": [np.asarray(g) for g in grads]}


def run_devrl(problem: dict, settings: dict) -> dict:
    import jax

    from devrl.measures import known
    from devrl.measures.llc import estimate_llc

    data = (jax.numpy.asarray(problem["x"]), jax.numpy.asarray(problem["y"]))
    w_star = tuple(jax.numpy.asarray(w) for w in problem["w_star"])

    def once(seed: int) -> tuple[float, dict]:
        start = time.perf_counter()
        result = estimate_llc(
            known.dln_loss, w_star, data, jax.random.PRNGKey(seed),
            step_size=settings["step_size"], nbeta=settings["nbeta"],
            localization=settings["localization"], num_steps=settings["num_steps"],
            num_burnin=settings["num_burnin"], num_chains=settings["num_chains"],
            batch_size=settings["batch_size"], draw_loss="minibatch")
        seconds = time.perf_counter() - start  # estimate_llc returns numpy: computation done
        return seconds, {"chain_llcs": result.chain_llcs.tolist(), "init_loss": result.init_loss,
                         "mala_acceptance": result.mala_acceptance}

    return _timed_runs(once, settings["repeats"])


def _timed_runs(once, repeats: int) -> dict:
    """The first call (seed 0) alone, then `repeats` calls (seeds 1..repeats), as a dict."""
    first_seconds, first = once(0)
    seconds, runs = [], []
    for seed in range(1, repeats + 1):
        elapsed, run = once(seed)
        seconds.append(elapsed)
        runs.append(run)
    chains = np.concatenate([run["chain_llcs"] for run in runs])
    return {"first_call_seconds": first_seconds, "first_call": first, "seconds": seconds,
            "median_seconds": statistics.median(seconds), "runs": runs,
            "llc_mean": float(chains.mean()),
            "llc_std": float(chains.std(ddof=1)) if chains.size > 1 else 0.0,
            "num_chains_pooled": int(chains.size)}


# ---------------------------------------------------------------------------------------------
# The devinterp (PyTorch) side: runs in the other venv, imports neither jax nor devrl.


def _identity(batch: tuple) -> tuple:
    return batch


def devinterp_side(args: argparse.Namespace) -> None:
    import warnings
    from importlib.metadata import version

    if version("devinterp") != DEVINTERP_VERSION:
        sys.exit(f"devinterp=={version('devinterp')} is not allowed: this benchmark matches the "
                 f"API and update rule of devinterp=={DEVINTERP_VERSION}")
    warnings.simplefilter("ignore")  # deprecation of SGLD, seeded runs, draws > loader length
    import torch
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    with np.load(args.problem) as stored:
        settings = json.loads(str(stored["settings"]))
        num_layers = int(stored["num_layers"])
        x, y = torch.from_numpy(stored["x"]), torch.from_numpy(stored["y"])
        w_star = [torch.from_numpy(stored[f"w_star_{i}"]) for i in range(num_layers)]
        w_check = [torch.from_numpy(stored[f"w_check_{i}"]) for i in range(num_layers)]
    torch.set_num_threads(settings["threads"])

    class DeepLinear(torch.nn.Module):
        """x @ W_1 @ ... @ W_L with W_s of shape (in, out): devrl.measures.known.dln_apply's
        layout."""

        def __init__(self, weights: list) -> None:
            super().__init__()
            self.weights = torch.nn.ParameterList(
                [torch.nn.Parameter(w.clone()) for w in weights])

        def forward(self, inputs):
            for weight in self.weights:
                inputs = inputs @ weight
            return inputs

    def evaluate(model, batch):
        """Mean over points of ½‖y − f(x)‖² summed over outputs: devrl.measures.known.dln_loss."""
        inputs, targets = batch
        return 0.5 * ((model(inputs) - targets) ** 2).sum(dim=-1).mean()

    check_model = DeepLinear(w_check)
    check_loss = evaluate(check_model, (x, y))
    check_loss.backward()
    with torch.no_grad():
        loss_w_star = float(evaluate(DeepLinear(w_star), (x, y)))
    check = {"loss_w_star": loss_w_star, "loss_w_check": float(check_loss),
             "grad_w_check": [w.grad.numpy() for w in check_model.weights]}

    class BatchedDataset(TensorDataset):
        """Fetches a whole minibatch with one indexing op (DataLoader uses __getitems__)."""

        def __getitems__(self, indices: list[int]) -> tuple:
            rows = torch.as_tensor(indices)  # a list index is parsed point by point: slow
            return tuple(tensor.index_select(0, rows) for tensor in self.tensors)

    batch, n = settings["batch_size"], settings["num_data"]
    per_epoch = max(1, n // batch) * batch  # whole minibatches, drawn with replacement

    def loader() -> DataLoader:
        if settings["loader"] == "batched":
            dataset = BatchedDataset(x, y)
            collate = {"collate_fn": _identity}
        else:  # torch's default: one __getitem__ per point, then default_collate stacks them
            dataset, collate = TensorDataset(x, y), {}
        points = RandomSampler(dataset, replacement=True, num_samples=per_epoch)
        return DataLoader(dataset, sampler=points, batch_size=batch, drop_last=True, **collate)

    def once(seed: int) -> tuple[float, dict]:
        start = time.perf_counter()
        model = DeepLinear(w_star)
        with torch.no_grad():
            init_loss = float(evaluate(model, (x, y)))  # L_n(w*) over all n, as devrl
        summary = estimate_learning_coeff_with_summary(
            model, loader(), evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs={"lr": settings["step_size"], "nbeta": settings["nbeta"],
                              "localization": settings["localization"]},
            num_draws=settings["num_draws"], num_chains=settings["num_chains"],
            num_burnin_steps=settings["num_burnin"], num_steps_bw_draws=1, init_loss=init_loss,
            seed=seed, device="cpu", verbose=False, cores=1)
        seconds = time.perf_counter() - start
        trace = summary["loss/trace"]
        if trace.shape != (settings["num_chains"], settings["num_draws"]):
            raise AssertionError(f"devinterp loss trace of shape {trace.shape}")
        chain_llcs = [summary[f"llc-chain/{i}"] for i in range(settings["num_chains"])]
        return seconds, {"chain_llcs": chain_llcs, "init_loss": init_loss}

    result = _timed_runs(once, settings["repeats"])
    result["check"] = {**check, "grad_w_check": [g.tolist() for g in check["grad_w_check"]]}
    result["threads"] = {"torch_num_threads": torch.get_num_threads(),
                         "torch_interop_threads": torch.get_num_interop_threads()}
    result["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                          "devinterp": version("devinterp"), "numpy": np.__version__}
    _write_json(args.json, result)


# ---------------------------------------------------------------------------------------------
# Driver.


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp.name, path)


def run_devinterp(args: argparse.Namespace, problem: dict, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        problem_path, result_path = Path(scratch) / "problem.npz", Path(scratch) / "result.json"
        arrays = {"x": problem["x"], "y": problem["y"], "num_layers": len(problem["w_star"]),
                  "settings": json.dumps(settings)}
        for i, (w, c) in enumerate(zip(problem["w_star"], problem["w_check"], strict=True)):
            arrays[f"w_star_{i}"], arrays[f"w_check_{i}"] = w, c
        np.savez(problem_path, **arrays)
        command = [str(args.devinterp_python), str(Path(__file__).resolve()), "--side",
                   "devinterp", "--problem", str(problem_path), "--json", str(result_path)]
        completed = subprocess.run(command, cwd=ROOT, check=False)
        if completed.returncode != 0:
            sys.exit(f"the devinterp side failed (exit {completed.returncode}): {' '.join(command)}")
        return json.loads(result_path.read_text())


def compare_losses(ours: dict, theirs: dict) -> dict:
    """Relative differences of the two sides' loss at w* and loss and gradient at w_check."""
    grad_scale = max(float(np.max(np.abs(g))) for g in ours["grad_w_check"])
    grad_error = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(ours["grad_w_check"], theirs["grad_w_check"], strict=True))
    return {key: abs(ours[key] - theirs[key]) / abs(ours[key])
            for key in ("loss_w_star", "loss_w_check")} | {"grad_w_check": grad_error / grad_scale}


def main() -> None:
    args = parse_args()
    if args.side == "devinterp":
        devinterp_side(args)
        return
    import jax
    import jaxlib

    from devrl.measures import known

    settings = settings_of(args)
    problem = make_problem(args)
    truth = {"widths": list(args.widths), "rank": args.rank,
             "num_params": known.dln_num_params(args.widths),
             "known_llc": known.dln_learning_coefficient(args.widths, args.rank),
             "multiplicity": known.dln_multiplicity(args.widths, args.rank),
             "problem_seed": PROBLEM_SEED}
    print(f"deep linear network {args.widths}, true rank {args.rank}: d = {truth['num_params']}, "
          f"known λ = {truth['known_llc']:g} (multiplicity θ = {truth['multiplicity']}); "
          f"n = {args.num_data}, batch {args.batch_size}, {args.chains} chains × {args.steps} "
          f"steps ({args.burnin} burn-in), ε = {args.step_size:g}, nβ = {args.nbeta:.4g}, "
          f"γ = {args.localization:g}", flush=True)
    ours_check = loss_check_devrl(problem)
    devrl = run_devrl(problem, settings)
    print(f"devrl done: median {devrl['median_seconds']:.3f} s", flush=True)
    devinterp = run_devinterp(args, problem, settings)
    mismatch = compare_losses(ours_check, devinterp.pop("check"))
    ratio = devinterp["median_seconds"] / devrl["median_seconds"]
    cores = len(os.sched_getaffinity(0))
    notes = [
        ("SGLD update on both sides: w <- w - (eps/2)(nbeta grad L_batch(w) + gamma (w - w*)) + "
         "sqrt(eps) N(0, I) (devinterp.optim.sgld.SGLD: lr = eps, nbeta, localization = gamma)"),
        "loss on both sides: mean over points of 0.5 * squared error summed over outputs",
        ("draw loss: each step's minibatch loss at the pre-step weights (devinterp "
         "LLCEstimator's 'loss'; devrl draw_loss='minibatch'); L_n(w*) over all n points on both "
         "sides (passed to devinterp as init_loss, where it defaults to a few minibatches)"),
        ("minibatches drawn with replacement on both sides (devinterp: RandomSampler(replacement="
         f"True), {args.loader} DataLoader); devinterp runs its chains one after another "
         "(cores=1)"),
        (f"threads: JAX/XLA uses all {cores} cores (its default); "
         f"torch.set_num_threads({args.threads})"),
        "devrl additionally computes a MALA acceptance every 10th draw and ‖w − w*‖ per draw",
        "first call: devrl includes jit compilation; medians exclude the first call",
    ]
    results = {
        "problem": truth, "settings": settings, "devrl": devrl, "devinterp": devinterp,
        "ratio_devinterp_over_devrl": ratio, "loss_mismatch_relative": mismatch,
        "cpu_count": os.cpu_count(), "cores_available": cores,
        "versions": {"devrl_side": {"python": sys.version.split()[0], "jax": jax.__version__,
                                    "jaxlib": jaxlib.__version__, "numpy": np.__version__},
                     "devinterp_side": devinterp.pop("versions")},
        "threads": {"jax": f"XLA default: all {cores} cores", **devinterp.pop("threads")},
        "notes": notes,
    }
    draws = args.chains * args.steps
    print(f"\n{'side':<10} {'first call s':>13} {'median s':>9} {'µs/step':>8}  "
          f"λ̂ mean ± std (chains)")
    for name, side in (("devrl", devrl), ("devinterp", devinterp)):
        print(f"{name:<10} {side['first_call_seconds']:>13.3f} {side['median_seconds']:>9.3f} "
              f"{1e6 * side['median_seconds'] / draws:>8.1f}  {side['llc_mean']:.2f} ± "
              f"{side['llc_std']:.2f} ({side['num_chains_pooled']})")
    print(f"known λ = {truth['known_llc']:g}; devinterp / devrl time = {ratio:.2f}; medians of "
          f"{args.repeats} run(s); devrl's first call includes compiling")
    print("loss agreement (relative): " + ", ".join(f"{k} {v:.1e}" for k, v in mismatch.items()))
    for note in notes:
        print(f"- {note}")
    _write_json(args.json, results)
    print(args.json)


if __name__ == "__main__":
    main()
