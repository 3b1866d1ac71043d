"""`make demo` (`ff-jax demo`): the whole system end to end on a CPU, printing what it finds.

backbone → feed data → dual encoder → embed + kNN → ranker → rerank → export bundle → server on
loopback → one real /v1/recommend request → a member's history and recommendations → server stopped.
Each stage is a function; the two training runs are gin files like any other (EXPERIMENT, RANKER_CONFIG),
and the server is the real `ff-jax serve` process, talked to over HTTP.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from ff_jax import assets
from ff_jax.data import compact_feed_world
from ff_jax.model import from_pretrained
from ff_jax.model.generate import greedy_generate
from ff_jax.rank.evaluate import rerank_run
from ff_jax.rank import train as _rank_train  # noqa: F401  (registers the ranker's entry point)
from ff_jax.retrieval.embed_job import EmbedConfig, embed_towers
from ff_jax.retrieval.eval_data import feed_eval_data
from ff_jax.retrieval.evaluate import evaluate_run
from ff_jax.serving.export import PLATFORMS, export_bundle
from ff_jax.serving.ranker import export_ranker
from ff_jax.train import loop as _loop  # noqa: F401  (registers the dual encoder's entry point)
from ff_jax.train.run import DUAL_ENCODER, RANKER, Run, train_from_config

EXPERIMENT = "experiments/compact_feed_world.gin"  # the dual encoder of stages 3 and 4
RANKER_CONFIG = "ranker/compact_feed_world.gin"  # the cross-encoder of stage 5

PROMPTS = (
    "Senior data engineer building streaming pipelines with Kafka and Spark.",
    "Hiring: backend engineer for our real-time data platform (Kafka, Flink).",
    "Pastry chef sharing a new sourdough croissant recipe.",
    "Our bakery opens a second shop downtown this weekend!",
)


def _banner(title: str):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


@nnx.jit
def _mean_pooled(model, tokens, segment_ids):
    hidden = model(tokens, segment_ids=segment_ids, compute_logits=False).hidden.astype(jnp.float32)
    mask = (segment_ids > 0)[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)


def backbone_stage():
    """A real pretrained LLaMA-architecture checkpoint runs: it completes a sentence and embeds text."""
    _banner("1. Pretrained backbone: SmolLM2-135M from GGUF")
    start = time.perf_counter()
    model, tokenizer = from_pretrained(assets.smollm2_gguf(), scan_layers=True)
    print(f"loaded {model.config.num_params() / 1e6:.0f}M params in {time.perf_counter() - start:.1f}s "
          f"on {jax.devices()[0].platform}")
    prompt = "The capital of Germany is"
    continuation = greedy_generate(model, tokenizer.encode(prompt), 8, stop_ids=(tokenizer.eos_id,))
    print(f"greedy: {prompt!r} -> {tokenizer.decode(continuation)!r}")

    ids = [tokenizer.encode(p) for p in PROMPTS]
    length = max(map(len, ids))
    tokens = np.full((len(ids), length), tokenizer.pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for row, seq in enumerate(ids):
        tokens[row, :len(seq)] = seq
        segments[row, :len(seq)] = 1
    embeddings = np.asarray(_mean_pooled(model, tokens, segments))
    similarity = embeddings @ embeddings.T
    print("cosine similarity of mean-pooled embeddings (untuned backbone):")
    for i, prompt in enumerate(PROMPTS):
        print(f"  [{i}] {' '.join(f'{s:5.2f}' for s in similarity[i])}  {prompt[:48]}")
    return model, tokenizer


def feed_data_stage(workdir: Path) -> tuple[Path, str]:
    """feed_world "tiny" with compact prompts as a prepared dataset, and a word-level tokenizer fitted to them."""
    _banner("2. Feed data: feed_world 'tiny' with quantised counts, prepared store + grain")
    data_dir = workdir / "tfds"
    prompts, tokenizer = compact_feed_world.prepare(data_dir)
    print(f"{len(prompts)} items; an item prompt: {prompts[0][:150]}")
    return data_dir, tokenizer


def dual_encoder_stage(run_dir: Path, steps: int, bindings: Sequence[str]) -> dict:
    """grain packed batches -> InfoNCE dual encoder -> held-out recall@K, as the gin config says."""
    _banner(f"3. Dual encoder: tiny LLaMA from scratch, InfoNCE + hard negatives, {steps} steps")
    validation = train_from_config(run_dir, DUAL_ENCODER, [EXPERIMENT], bindings)["validation"]
    print(f"held-out validation members ranked against the corpus ({run_dir}):")
    trained, chance = validation["recall@10"], validation["random_recall@10"]
    print(f"  recall@10: {trained:.3f}   random: {chance:.4f}   ({trained / max(chance, 1e-9):.0f}x)")
    print(f"  recall@50: {validation['recall@50']:.3f}")
    print(f"  in-batch accuracy: {validation['in_batch_accuracy']:.2f}")
    return validation


def retrieval_stage(dual: Run) -> dict:
    """`ff-jax embed` + `ff-jax eval` in-process: the checkpoint embeds the corpus and the test
    members, exact and ScaNN search rank the corpus, and the same members are ranked by baselines."""
    _banner("4. Retrieval: embed corpus + test members, exact and ScaNN kNN, against baselines")
    run_dir = dual.workdir
    embed_towers(dual, EmbedConfig(dims=(32,)), progress=True)
    report = evaluate_run(dual, ks=(10, 50, 100), baselines=("popularity", "random"), progress=False)
    full = report["by_dim"][str(report["width"])]["metrics"]["all"]["recall@10"]
    popular = report["baselines"]["popularity"]["metrics"]["all"]["recall@10"]
    print(f"test recall@10: dual encoder {full:.3f}, popularity {popular:.3f} "
          f"({report['members_evaluated']} members, report in {run_dir / 'eval'})")
    return report


def ranker_stage(workdir: Path, data_dir: Path, tokenizer: str, run_dir: Path, steps: int) -> Run:
    """`ff-jax rank-train` + `ff-jax eval` of a ranker run in-process: a tiny cross-encoder learns to
    order each member's candidates (the engaged item, impressed ones, the retriever's near misses),
    then reranks the dual encoder's top 100 for every test member."""
    _banner(f"5. Ranker: tiny cross-encoder, listwise softmax, {steps} steps; reranks the top 100")
    rank_dir = workdir / "ranker"
    train_from_config(rank_dir, RANKER, [RANKER_CONFIG], [f"DATA_DIR={str(data_dir)!r}", f"TOKENIZER={tokenizer!r}",
                                                         f"RETRIEVER={str(run_dir)!r}", f"STEPS={steps}"])
    ranker = Run.open(rank_dir)
    report = rerank_run(ranker, progress=False)
    before, after = (report[k]["metrics"]["all"]["ndcg@10"] for k in ("retrieval", "reranked"))
    print(f"test NDCG@10: retrieval alone {before:.3f}, reranked {after:.3f} ({report['members']} members)")
    return ranker


def export_stage(dual: Run, ranker_run: Run, bundle_dir: Path) -> Path:
    """`ff-jax export --workdir=RUN --ranker=RANKER --out=BUNDLE`: towers and ranker steps as
    jax.export programs, weights, tokenizer, prompts, catalogue, index; every file checksummed."""
    _banner("6. Export: a verified serving bundle (towers + ranker, CPU and CUDA programs)")
    ranker = export_ranker(ranker_run, PLATFORMS)
    bundle = export_bundle(dual, bundle_dir, ranker=ranker)
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    size = sum((bundle / f).stat().st_size for f in files) / 2**20
    print(f"{bundle}: {len(files)} files, {size:.1f} MiB, manifest.json holds their sha256")
    return bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def serving_stage(bundle: Path, state_dir: Path, member, ready_timeout: float = 300.0) -> dict:
    """The real `ff-jax serve` on loopback: ready once it has compiled every shape it serves; one
    /v1/recommend with a test member's history (catalogue ids); the answer printed with item text."""
    _banner("7. Serving: `ff-jax serve` on loopback, one real /v1/recommend, then stopped")
    port = _free_port()
    command = [sys.executable, "-m", "ff_jax.cli", "serve", f"--bundle={bundle}", f"--workdir={state_dir}",
               f"--port={port}"]
    env = {k: v for k, v in os.environ.items() if k != "FF_JAX_SERVE_TOKEN"}  # no writes needed here
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"ff-jax serve exited with {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                _http(f"{base}/readyz", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.perf_counter() - start > ready_timeout:
                    raise RuntimeError(f"ff-jax serve was not ready after {ready_timeout:.0f} s") from None
                time.sleep(1.0)
        print(f"ready after {time.perf_counter() - start:.0f} s (port {port})")
        history = member.engaged_history[-8:]
        request = {"member": {"history": [{"item_id": item} for item in history]}, "k": 5,
                   "exclude_items": member.engaged_history}
        start = time.perf_counter()
        answer = _http(f"{base}/v1/recommend", request)
        latency = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    catalogue = pd.read_parquet(bundle / "catalogue.parquet").set_index("item_id")["prompt"]

    def short(item: str) -> str:  # "<item><topic>ml</topic>…" -> "topic ml, …"
        fields = re.findall(r"<(\w+)>([^<]*)</\1>", str(catalogue.get(item, "")))
        return ", ".join(f"{name.replace('_', ' ')} {value.strip()}" for name, value in fields)[:100]

    print(f"member {member.user_id}, the last {len(history)} items of their history:")
    for item in history:
        print(f"  {item}  {short(item)}")
    print(f"recommended (POST /v1/recommend in {latency * 1000:.0f} ms; held-out next items: "
          f"{', '.join(member.targets[:3])}):")
    for rec in answer["items"]:
        ranker = "" if rec.get("ranker_score") is None else f" ranker {rec['ranker_score']:6.2f}"
        hit = " <- held out, engaged" if rec["item_id"] in member.targets else ""
        print(f"  {rec['item_id']}  retrieval {rec['retrieval_score']:.3f}{ranker}  {short(rec['item_id'])}{hit}")
    return answer


def run(workdir: Path, steps: int = 100, bindings: Sequence[str] = (), ranker_steps: int = 150) -> dict:
    """The demo into `workdir` (emptied first: the demo shows the whole job). The dual encoder is
    EXPERIMENT with the prepared data, `steps` and `bindings` ("NAME=VALUE", as --gin.NAME=VALUE);
    the ranker is RANKER_CONFIG for `ranker_steps`."""
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    backbone_stage()
    data_dir, tokenizer = feed_data_stage(workdir)
    run_dir = workdir / "run"
    dual_encoder_stage(run_dir, steps, [f"DATA_DIR={str(data_dir)!r}", f"TOKENIZER={tokenizer!r}", f"STEPS={steps}",
                                        *bindings])
    dual = Run.open(run_dir)  # what `ff-jax embed --workdir=<run_dir>` opens too
    report = retrieval_stage(dual)
    _, members = feed_eval_data(dual.spec.feed, "test")
    ranker = ranker_stage(workdir, data_dir, tokenizer, run_dir, ranker_steps)
    bundle = export_stage(dual, ranker, workdir / "bundle")
    member = max((m for m in members if m.targets), key=lambda m: len(m.engaged_history))
    serving_stage(bundle, workdir / "serve_state", member)
    return report
