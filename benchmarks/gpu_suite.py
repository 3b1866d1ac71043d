"""Every GPU figure the issues name, in one prepared command on one device, written to one JSON.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite_h200.json   # a lent GPU: <= 8 min on one H200
    python benchmarks/gpu_suite.py --cpu-check --out /tmp/gpu_suite_cpu.json     # tiny shapes on a CPU: the plumbing

Parts, each a subprocess with its own time limit (a crash or a timeout of one leaves the others;
the JSON is rewritten after each, so a killed suite keeps what finished):
  train_1b   forward+backward+AdamW of the llama3_2_1b preset, bf16 compute (fp32 params), remat and
             scanned layers, on 2,048-token rows with a dual-encoder loss on mean-pooled states (no LM
             head, as the dual encoder trains): step time, tokens/s and MFU = model FLOPs/s over the
             device's dense bf16 peak. Model FLOPs per token: 6 x non-embedding params + 6 x layers x
             T x heads x head_dim (causal attention, fwd + bwd); remat's recomputation is not counted.
             Then the largest per-device batch with remat: XLA's compiled memory analysis at two
             batch sizes, a linear fit to the device's memory limit, that batch compiled and checked,
             then run (its own MFU).
  embed      benchmarks/embed_throughput.py: `ff-jax embed`'s path against HF transformers (sdpa)
             mean pooling, same weights and token ids (HF runs where torch has a device: the JSON
             says which).
  rank       benchmarks/rank.py (ranker candidates/s) when it exists.
  movielens  the MovieLens GPU recipe, experiments/movielens_gpu.sh (train, embed, eval with the
             baselines); --cpu-check runs the same three commands with a 2-step tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMITS_S = {"train_1b": 150, "embed": 90, "rank": 30, "movielens": 210}  # 480 s: the 8-minute goal
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L4": 121e12}  # dense, no sparsity

# Per mode: the 1B preset's shape overrides (none on a GPU), tokens per row, batches measured.
SHAPES = {"gpu": dict(overrides={}, length=2048, batch=8, probe=(4, 8), steps=5, max_batch=4096),
          "cpu": dict(overrides=dict(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                     num_kv_heads=2, head_dim=16, vocab_size=512),
                      length=128, batch=2, probe=(2, 4), steps=2, max_batch=64)}


# ----------------------------------------------------------------------------- train_1b


def train_1b(cpu_check: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from ff_jax.model import create_sharded_model, make_mesh, presets
    from ff_jax.model.sharding import logical_axis_rules, use_rules
    from ff_jax.train.memory import device_memory_bytes, step_memory

    shape = SHAPES["cpu" if cpu_check else "gpu"]
    cfg = presets.llama3_2_1b(dtype="bfloat16", param_dtype="float32", remat=True,
                              scan_layers=True).replace(**shape["overrides"])
    mesh, rules = make_mesh(data=1, num_devices=1), logical_axis_rules()
    with jax.set_mesh(mesh), use_rules(rules):
        model = create_sharded_model(cfg, mesh, rules)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-4)
    opt_state = jax.jit(tx.init)(params)

    def loss_fn(params, tokens):
        """In-batch softmax between the mean-pooled first and second halves of each row's prompts."""
        hidden = nnx.merge(graphdef, params)(tokens, compute_logits=False).hidden.astype(jnp.float32)
        half = tokens.shape[1] // 2
        a, b = hidden[:, :half].mean(1), hidden[:, half:].mean(1)
        a, b = a / jnp.linalg.norm(a, axis=-1, keepdims=True), b / jnp.linalg.norm(b, axis=-1, keepdims=True)
        return optax.softmax_cross_entropy_with_integer_labels(a @ b.T / 0.05, jnp.arange(len(a))).mean()

    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    embedding = cfg.vocab_size * cfg.hidden_size
    flops_per_token = 6 * (cfg.num_params() - embedding) + 6 * cfg.num_layers * shape["length"] * cfg.num_heads * cfg.head_dim
    device = jax.devices()[0]
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device.device_kind), None)

    def tokens_of(batch):
        return jax.random.randint(jax.random.key(batch), (batch, shape["length"]), 0, cfg.vocab_size, jnp.int32)

    def compiled(batch):
        with jax.set_mesh(mesh), use_rules(rules):
            return step.lower(params, opt_state, tokens_of(batch)).compile()

    def measure(batch: int) -> dict:
        nonlocal params, opt_state
        tokens = tokens_of(batch)
        with jax.set_mesh(mesh), use_rules(rules):
            start = time.perf_counter()
            params, opt_state, loss = step(params, opt_state, tokens)
            loss.block_until_ready()
            compile_s = time.perf_counter() - start
            times = []
            for _ in range(shape["steps"]):
                start = time.perf_counter()
                params, opt_state, loss = step(params, opt_state, tokens)
                loss.block_until_ready()
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rate = batch * shape["length"] / seconds
        return {"batch": batch, "tokens_per_step": batch * shape["length"], "step_s": round(seconds, 4),
                "first_step_s": round(compile_s, 2), "tokens_per_s": round(rate), "loss": float(loss),
                "model_tflops_per_s": float(f"{rate * flops_per_token / 1e12:.4g}"),
                "mfu": None if peak is None else round(rate * flops_per_token / peak, 4)}

    result = {"preset": "llama3_2_1b" + (" (cpu-check: tiny shape)" if cpu_check else ""), "params": cfg.num_params(),
              "non_embedding_params": cfg.num_params() - embedding, "length": shape["length"],
              "dtype": "bfloat16 compute, float32 params, AdamW", "remat": True, "scan_layers": True,
              "model_flops_per_token": flops_per_token, "peak_bf16_flops": peak, "device_kind": device.device_kind,
              "at_batch": measure(shape["batch"])}

    # The largest batch with remat: memory is affine in the batch, so two compiles give the line.
    limit = device_memory_bytes(mesh)
    (b1, b2), used = shape["probe"], {}
    for b in (b1, b2):
        used[b] = step_memory(compiled(b)).total
    per_row = max((used[b2] - used[b1]) / (b2 - b1), 1.0)
    fixed = used[b1] - per_row * b1
    guess = int(min(shape["max_batch"], max(b1, (0.92 * limit - fixed) // per_row)))
    while guess > b1 and step_memory(compiled(guess)).total > 0.95 * limit:
        guess = int(guess * 0.9)
    result["max_batch"] = {"device_memory_gib": round(limit / 2**30, 2), "bytes_at": {str(b): used[b] for b in used},
                           "bytes_per_row": int(per_row), "batch": guess,
                           "step_bytes": step_memory(compiled(guess)).total, "capped_at": shape["max_batch"]}
    result["max_batch"].update(measure(guess))
    return result


# ----------------------------------------------------------------------------- other scripts


def _env() -> dict:
    """PATH with this interpreter's bin/ first (ff-jax), the repository importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(command: list[str], log: Path, limit_s: float) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=_env(), timeout=limit_s,
                       check=True)


def embed(cpu_check: bool, work: Path, limit_s: float) -> dict:
    import torch

    out = work / "embed.json"
    sizes = ["--items", "16", "--members", "4", "--repeats", "1"] if cpu_check else [
        "--items", "1682", "--members", "32", "--repeats", "2"]
    _run([sys.executable, "benchmarks/embed_throughput.py", *sizes, "--data-dir", str(work / "tfds"),
          "--out", str(out)], work / "embed.log", limit_s)
    return {"hf_torch_device": "cuda" if torch.cuda.is_available() else "cpu (this torch has no CUDA: the HF "
            "figure is not a GPU comparison)", **json.loads(out.read_text())}


def rank(cpu_check: bool, work: Path, limit_s: float) -> dict:
    script = REPO / "benchmarks" / "rank.py"
    if not script.exists():
        return {"status": "absent", "why": "benchmarks/rank.py does not exist yet (the ranker's benchmark)"}
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO,
                           env=_env(), timeout=60).stdout
    out = work / "rank.json"
    tiny = [f for f in ("--small", "--quick") if f in usage][:1] if cpu_check else []
    flags = tiny + (["--out", str(out)] if "--out" in usage else [])
    _run([sys.executable, str(script), *flags], work / "rank.log", limit_s)
    return json.loads(out.read_text()) if out.exists() else {"log_tail": (work / "rank.log").read_text()[-2000:]}


def movielens(cpu_check: bool, work: Path, limit_s: float) -> dict:
    run_dir, data_dir = work / "movielens_gpu", work / "tfds"
    start = time.perf_counter()
    if cpu_check:  # the recipe's three commands, with a 2-step tiny model
        shrink = ["--gin.STEPS=2", "--gin.train.model_config=@tiny()", "--gin.train.pretrained=None",
                  "--gin.tiny.vocab_size=49216", "--gin.train.model_overrides={}", "--gin.FeedData.tokenizer=@smollm2_gguf()",
                  "--gin.BatchConfig.examples_per_shard=4", "--gin.BatchConfig.length=256",
                  "--gin.BatchConfig.member_budget=256", "--gin.OptimizerConfig.warmup_steps=1",
                  "--gin.FeedData.validation_members=16", "--gin.train.eval_every=0"]
        for command in (["ff-jax", "train", "--gin_file=experiments/movielens_gpu.gin", f"--gin.DATA_DIR={data_dir}",
                         *shrink, f"--workdir={run_dir}"], ["ff-jax", "embed", f"--workdir={run_dir}"],
                        ["ff-jax", "eval", f"--workdir={run_dir}", "--gin.evaluate_run.baselines=('popularity',)"]):
            _run(command, work / "movielens.log", limit_s - (time.perf_counter() - start))
    else:
        _run(["bash", "experiments/movielens_gpu.sh", str(run_dir), str(data_dir)], work / "movielens.log", limit_s)
    report = json.loads((run_dir / "eval" / "metrics_test.json").read_text())
    full = report["by_dim"][str(report["width"])]["metrics"]
    return {"seconds_end_to_end": round(time.perf_counter() - start, 1),
            "model": {c: {k: full[c][k] for k in ("recall@10", "recall@50", "ndcg@10")} for c in full},
            "baselines_recall@10": {n: r["metrics"]["all"]["recall@10"] for n, r in report.get("baselines", {}).items()},
            "memory": json.loads((run_dir / "memory.json").read_text()) if (run_dir / "memory.json").exists() else None}


PARTS = {"train_1b": lambda cpu, work, limit: train_1b(cpu), "embed": embed, "rank": rank, "movielens": movielens}


# ----------------------------------------------------------------------------- the suite


def device() -> dict:
    import jax

    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "count": len(devices),
            "jax": jax.__version__}


def run_part(name: str, cpu_check: bool, work: Path, limit_s: float) -> dict:
    """One part in its own process (`--part NAME`), killed at its limit."""
    out = work / f"{name}.result.json"
    command = [sys.executable, __file__, "--part", name, "--part-out", str(out), "--work", str(work),
               "--limit", str(limit_s)] + (["--cpu-check"] if cpu_check else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=limit_s + 30, cwd=REPO, env=_env())
        tail = (proc.stdout + proc.stderr)[-3000:]
        status = "ok" if proc.returncode == 0 and out.exists() else (
            f"timeout after {limit_s:.0f} s" if "timeout: " in tail else f"failed (exit {proc.returncode})")
    except subprocess.TimeoutExpired as err:
        status, tail = f"timeout after {limit_s:.0f} s", str(err.stdout or "")[-3000:]
    entry = {"status": status, "seconds": round(time.perf_counter() - start, 1), "limit_s": round(limit_s)}
    if status == "ok":
        entry["result"] = json.loads(out.read_text())
    else:
        entry["log_tail"] = tail
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-check", action="store_true", help="tiny shapes: proves the suite end to end on a CPU")
    parser.add_argument("--out", default="benchmarks/results/gpu_suite.json")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all parts (default {sum(LIMITS_S.values())}; 10x that with --cpu-check)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # internal: run one part here
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        try:
            result = PARTS[args.part](args.cpu_check, Path(args.work), args.limit)
        except subprocess.TimeoutExpired as err:
            sys.exit(f"timeout: {' '.join(map(str, err.cmd))} ran past {err.timeout:.0f} s")
        Path(args.part_out).write_text(json.dumps(result, indent=1))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"suite": "benchmarks/gpu_suite.py", "mode": "cpu-check" if args.cpu_check else "gpu",
              "device": device(), "machine": describe("jax", "jaxlib"), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "parts": {}}
    budget = args.budget or sum(LIMITS_S.values()) * (10 if args.cpu_check else 1)
    report["budget_s"] = budget
    start = time.perf_counter()
    for name in args.parts:
        left = budget - (time.perf_counter() - start)
        if left < 10:
            report["parts"][name] = {"status": "skipped: the suite's budget is spent"}
            continue
        limit = min(LIMITS_S[name] * (10 if args.cpu_check else 1), left)  # a CPU is slower; the check has no goal
        print(f"{name}: up to {limit:.0f} s", flush=True)
        report["parts"][name] = run_part(name, args.cpu_check, work, limit)
        print(f"  {report['parts'][name]['status']} in {report['parts'][name]['seconds']} s", flush=True)
        report["total_s"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(report, indent=1))
    print(f"{out}: {report['total_s']} s in all; scratch in {work}")
    if args.work is None and all(p.get("status") == "ok" for p in report["parts"].values()):
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
