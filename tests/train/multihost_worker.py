"""One process of the multi-host test: trains the tiny dual encoder for a few steps on a fixed
global batch and writes its losses as JSON. Run alone (one process, all devices local) or as one
of several jax.distributed processes on localhost, each feeding only its own batch shards."""

import json
import sys


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    import jax

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                   process_id=process_id)
    from flax import nnx

    from ff_jax.model import Llama, make_mesh, presets
    from ff_jax.model.sharding import create_sharded
    from ff_jax.train import step as steps
    from ff_jax.train.dual_encoder import DualEncoder, EncoderConfig, Scoring
    from ff_jax.train.losses import InfoNCE
    from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
    from train_fakes import toy_batches

    mesh = make_mesh(data=-1)
    loss = InfoNCE()
    model = create_sharded(lambda: DualEncoder(Llama(presets.tiny(vocab_size=512), rngs=nnx.Rngs(0)), EncoderConfig(),
                                               Scoring.for_loss(loss), rngs=nnx.Rngs(1)), mesh)
    optimizer = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, total_steps=10)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, 0, 0, mesh)
    global_batches = toy_batches(num_batches=3, num_shards=4, per_shard=2, seed=5)
    sharding = steps.batch_shardings(global_batches[0], mesh)
    train_step, _ = steps.jit_steps(graphdef, steps.StepConfig(loss, tx, 3, 3, learning_rate_schedule(optimizer)),
                                    shardings, sharding, mesh)
    local = 4 // num_processes  # this process's shards: the pipeline would read only these
    losses = []
    for batch in global_batches:
        mine = jax.tree.map(lambda v: v[process_id * local:(process_id + 1) * local], batch)
        state, metrics = train_step(state, steps.device_batch(mine, sharding))
        losses.append(float(metrics["loss"]))
    with open(out, "w") as f:
        json.dump({"losses": losses, "process_count": jax.process_count(), "devices": jax.device_count()}, f)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
