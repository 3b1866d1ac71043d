"""Your own tables through the CLI as a user runs it: `ff-jax train` with --gin.DATASET=tables
--gin.TABLES=<folder>, then `ff-jax embed` and `ff-jax eval` on the workdir alone (they read its
config.gin, so the options and the content key come back), for the committed CSV dataset (latin-1,
no timestamps) and Parquet dataset (ratings, ids written as numbers). The tiny model, a few steps."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ff_jax import cli
from ff_jax.data import prepared as tb
from ff_jax.data.tables_options import TablesOptions
from ff_jax.retrieval.embedding_store import read_tower

pytestmark = [pytest.mark.xdist_group("tables_e2e"), pytest.mark.slow]

HERE = Path(__file__).resolve().parent
SMALL = ["--gin.STEPS=3", "--gin.train.eval_every=-1", "--gin.CheckpointConfig.save_every=3",
         "--gin.BatchConfig.examples_per_shard=1", "--gin.BatchConfig.length=256",
         "--gin.BatchConfig.member_budget=256", "--gin.BatchConfig.item_budget=128",
         "--gin.BatchConfig.max_segments=4"]
DATASETS = {
    "tables_csv": ["--gin.TablesOptions.encoding=latin-1"],
    "tables_parquet": ["--gin.TablesOptions.rating_threshold=4", "--gin.TablesOptions.numeric_ids=True"],
    "tables_books": ["--gin.TablesOptions.item_text='{title} by {author}'", "--gin.TablesOptions.rating_threshold=6"],
}


def numpy_recall_at_10(workdir: Path, only: list[str] | None = None) -> float:
    """Mean recall@10 of the test members (or of those named in `only`) recomputed here from the stored
    embeddings: each member's items by dot product, its engaged history excluded, hits over its
    number of targets."""
    from ff_jax.retrieval.eval_data import feed_eval_data
    from ff_jax.train.run import Run

    training, split = feed_eval_data(Run.open(workdir).spec.feed, "test")
    item_ids, items = read_tower(workdir / "embeddings" / "items")
    member_ids, members = read_tower(workdir / "embeddings" / "members_test")
    corpus = list(training.corpus_ids)
    matrix = np.stack([items[item_ids.tolist().index(i)] for i in corpus])
    recalls = []
    for member in (m for m in split if m.targets and (only is None or m.user_id in only)):
        scores = matrix @ members[member_ids.tolist().index(member.user_id)]
        scores[[corpus.index(i) for i in member.engaged_history if i in corpus]] = -np.inf
        top = {corpus[p] for p in np.argsort(-scores, kind="stable")[:10]}
        recalls.append(len(top & set(member.targets)) / len(set(member.targets)))
    return float(np.mean(recalls))


def prepared_configs(data_dir: Path) -> list[str]:
    """The preparations under data_dir (`tables` and `tables_corpus` share one), with nothing else there."""
    assert sorted(p.name for p in data_dir.iterdir()) == ["tables"]  # no half-prepared or scratch folders
    return sorted(p.parent.parent.name for p in (data_dir / "tables").glob("*/*/metadata.json"))


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_train_embed_eval_on_your_own_tables(tmp_path, capsys, dataset):
    folder, data_dir, workdir = HERE / dataset, tmp_path / "tfds", tmp_path / "run"
    code = cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", "--gin.DATASET=tables",
                     f"--gin.TABLES={folder}", f"--gin.DATA_DIR={data_dir}", f"--workdir={workdir}",
                     *DATASETS[dataset], *SMALL])
    out = capsys.readouterr().out
    assert code == 0
    assert f"Load summary for '{dataset}'" in out and "dropped 0" in out  # printed on first use
    (config,) = prepared_configs(data_dir)
    assert config.startswith(f"{dataset}_")
    assert (workdir / "checkpoints" / "3").exists()

    assert cli.main(["embed", f"--workdir={workdir}"]) == 0
    item_ids, _ = read_tower(workdir / "embeddings" / "items")
    assert len(item_ids) == 60
    manifest = json.loads((workdir / "embeddings" / "items" / "manifest.json").read_text())
    assert manifest["settings"]["dataset"] == f"tables/{config}"

    assert cli.main(["eval", f"--workdir={workdir}", "--gin.evaluate_run.baselines=('popularity',)",
                     "--gin.evaluate_run.ks=(5, 10)"]) == 0
    report = json.loads((workdir / "eval" / "metrics_test.json").read_text())
    assert report["members_evaluated"] == 24
    assert report["by_dim"]["64"]["metrics"]["all"]["recall@10"] == pytest.approx(numpy_recall_at_10(workdir))
    assert "popularity" in report["baselines"]
    # A sample of the members: its figures are those of the members it names, for every method.
    assert cli.main(["eval", f"--workdir={workdir}", "--gin.evaluate_run.baselines=('popularity',)",
                     "--gin.evaluate_run.sample=10", "--gin.evaluate_run.output='eval_sample'"]) == 0
    sampled = json.loads((workdir / "eval_sample" / "metrics_test.json").read_text())
    chosen = sampled["sampled_members"]
    assert len(set(chosen)) == sampled["members_evaluated"] == 10 and sampled["members_sampled_from"] == 24
    assert sampled["by_dim"]["64"]["metrics"]["all"]["recall@10"] == pytest.approx(numpy_recall_at_10(workdir, chosen))
    assert sampled["baselines"]["popularity"]["metrics"]["all"]["users"] == 10
    # embed and eval found the run's dataset by the same content key (the corpus sibling included)
    assert prepared_configs(data_dir) == [config]


def test_a_changed_file_is_prepared_anew(tmp_path, capsys):
    """The same command after one item's text changed: a second preparation under a new key, whose
    records hold the new text; the first one is left as it was."""
    from ff_jax.data.feed_data import FeedData

    folder = tmp_path / "mine"
    shutil.copytree(HERE / "tables_csv", folder)
    data = FeedData(data_dir=str(tmp_path / "tfds"), dataset="tables", tables=str(folder),
                    tables_options=TablesOptions(encoding="latin-1"))
    first = data.config_name
    corpus = data.open_dataset("tables_corpus")[0]["corpus"]
    assert not any("Bouillabaisse" in corpus[i]["item_prompt"] for i in range(len(corpus)))
    items = (folder / "items.csv").read_bytes()
    assert items.count(b'part 0"') == 1
    (folder / "items.csv").write_bytes(items.replace(b'part 0"', b'Bouillabaisse"'))
    second = data.config_name
    assert second != first
    corpus = data.open_dataset("tables_corpus")[0]["corpus"]
    assert any("Bouillabaisse" in corpus[i]["item_prompt"] for i in range(len(corpus)))
    assert prepared_configs(tmp_path / "tfds") == sorted([first, second])
    out = capsys.readouterr().out
    assert out.count("Load summary for 'mine'") == 2
    # the second preparation says why it happened and what it means for a run trained on the first
    assert f"changed since {first} was prepared from them" in out and "train again" in out


def write_books(folder: Path, users: int = 2_000, items: int = 3_000, interactions: int = 120_000) -> Path:
    """A medium public-dataset shape, generated: ratings 0-10 (0 = implicit), no timestamps, and
    items with title / author / year / publisher but no `text` column."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    pd.DataFrame({"user_id": np.arange(users), "age": rng.integers(16, 80, users)}).to_csv(folder / "users.csv",
                                                                                         index=False)
    popularity = rng.pareto(1.2, items) + 1
    pd.DataFrame({"item_id": [f"isbn{i:06d}" for i in range(items)],
                  "title": [f"Book {i} of the {['sea', 'stars', 'city', 'north'][i % 4]}" for i in range(items)],
                  "author": [f"Author {i % 400}" for i in range(items)], "year": rng.integers(1900, 2024, items),
                  "publisher": [f"House {i % 37}" for i in range(items)]}).to_csv(folder / "items.csv", index=False)
    pd.DataFrame({"user_id": rng.integers(0, users, interactions),
                  "item_id": [f"isbn{i:06d}" for i in rng.choice(items, interactions, p=popularity / popularity.sum())],
                  "rating": rng.integers(0, 11, interactions)}).to_csv(folder / "interactions.csv", index=False)
    return folder


def test_a_medium_dataset_trains_embeds_and_evaluates_through_the_cli(tmp_path, capsys):
    """120k interactions with a text template, through `ff-jax train` / `embed` / `eval` as a user
    types them: every test member is evaluated, against the text-free baselines."""
    folder, data_dir, workdir = write_books(tmp_path / "books"), tmp_path / "data", tmp_path / "run"
    code = cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", "--gin.DATASET=tables",
                     f"--gin.TABLES={folder}", f"--gin.DATA_DIR={data_dir}", f"--workdir={workdir}",
                     "--gin.TablesOptions.item_text='{title} by {author}'", "--gin.TablesOptions.rating_threshold=6",
                     "--gin.TablesOptions.numeric_ids=True", *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "read 120,000, kept 120,000" in out and "text = '{title} by {author}'" in out
    (config,) = prepared_configs(data_dir)
    train = (data_dir / "tables" / config).glob("*/train.arrow")
    sources = tb.open_prepared(data_dir, "tables", config)[0]
    assert next(train).stat().st_size / len(sources["train"]) < 64  # ids, not prompts
    assert "by Author" in sources["train"][0]["positive_prompt"]
    assert cli.main(["embed", f"--workdir={workdir}"]) == 0
    assert cli.main(["eval", f"--workdir={workdir}",
                     "--gin.evaluate_run.baselines=('popularity', 'random', 'itemknn', 'als', 'bpr')"]) == 0
    report = json.loads((workdir / "eval" / "metrics_test.json").read_text())
    assert report["members_evaluated"] == len(sources["test"]) > 1_000
    assert set(report["baselines"]) >= {"popularity", "random", "itemknn", "als", "bpr"}


def test_ff_jax_prepare_prepares_once_and_trains_nothing(tmp_path, capsys):
    args = ["prepare", "--gin_file=experiments/tiny_smoke.gin", "--gin.DATASET=tables",
            f"--gin.TABLES={HERE / 'tables_books'}", f"--gin.DATA_DIR={tmp_path / 'data'}",
            "--gin.TablesOptions.item_text='{title} by {author}'", "--gin.TablesOptions.rating_threshold=6"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    (config,) = prepared_configs(tmp_path / "data")
    assert "Load summary for 'tables_books'" in out
    assert f"prepared tables/{config} in {tmp_path / 'data'}: " in out and "60 items" in out
    assert cli.main(args) == 0
    assert "Load summary" not in capsys.readouterr().out  # reused, not prepared again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no workdir, no checkpoints
