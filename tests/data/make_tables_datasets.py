"""Writes the two small "your own tables" datasets the tests train on (run once; the output is committed).

    .venv/bin/python tests/data/make_tables_datasets.py

tables_csv/      latin-1 CSV files, interactions WITHOUT timestamps (file order is time order), an
                 `engaged` column. Read with TablesOptions.encoding = "latin-1".
tables_parquet/  Parquet files with explicit 1-5 ratings instead of `engaged`, integer user ids in
                 users.parquet and zero-padded text ids ("007") in interactions.parquet, and a
                 schema.json. Read with TablesOptions.rating_threshold = 4, numeric_ids = True.
tables_books/    the shape of a public book-ratings dump: items with title / author / year / publisher
                 and no `text` column, ratings 0-10 (0 = implicit), no timestamps. Read with
                 TablesOptions.item_text = '{title} by {author}', rating_threshold = 6.
Members of two tastes (cooking, code) engage mostly with posts of their taste, so a model can learn.
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
TOPICS = {
    "cooking": ["café crème brûlée", "pâté and baguette", "jalapeño salsa", "crêpes au beurre", "piña colada"],
    "code": ["python generators", "rust borrow checker", "sql indexes", "unit tests", "git rebase"],
}


def make(seed: int, n_users: int = 24, n_items: int = 60, per_user: int = 22):
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    taste = rng.integers(0, 2, n_users)
    headlines = [f"{'Chef' if t == 0 else 'Engineer'} nº{i} from Zürich" for i, t in enumerate(taste)]
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "headline": headlines,
                          "country": rng.choice(["CH", "FR", "DE"], n_users)})
    topic = np.arange(n_items) % 2
    items = pd.DataFrame({"item_id": [f"p{j:03d}" for j in range(n_items)],
                          "text": [f"Notes on {TOPICS[names[t]][j % 5]}, part {j}" for j, t in enumerate(topic)],
                          "topic": [names[t] for t in topic]})
    rows = []
    for _ in range(per_user):  # interleaved members: file order is each member's time order
        for u in range(n_users):
            same = rng.random() < 0.85
            pool = np.flatnonzero(topic == (taste[u] if same else 1 - taste[u]))
            rows.append((u + 1, int(rng.choice(pool)), same))
    inter = pd.DataFrame(rows, columns=["user_id", "item", "same"]).drop_duplicates(["user_id", "item"])
    inter["item_id"] = items["item_id"].to_numpy()[inter["item"]]
    return rng, users, items, inter.reset_index(drop=True)


def write_csv():
    _, users, items, inter = make(seed=1)
    out = HERE / "tables_csv"
    out.mkdir(exist_ok=True)
    inter = inter.assign(engaged=np.where(inter["same"], "true", "false"))[["user_id", "item_id", "engaged"]]
    for name, frame in (("users", users), ("items", items), ("interactions", inter)):
        frame.to_csv(out / f"{name}.csv", index=False, encoding="latin-1")


def write_parquet():
    rng, users, items, inter = make(seed=2)
    out = HERE / "tables_parquet"
    out.mkdir(exist_ok=True)
    stars = np.where(inter["same"], rng.choice([3, 4, 5], len(inter), p=[0.2, 0.4, 0.4]),
                     rng.choice([1, 2, 3], len(inter)))
    inter = pd.DataFrame({"user_id": inter["user_id"].map(lambda u: f"{u:03d}"), "item_id": inter["item_id"],
                          "timestamp": 1_700_000_000 + 3600 * np.arange(len(inter)), "rating": stars})
    users.to_parquet(out / "users.parquet", index=False)
    items.to_parquet(out / "items.parquet", index=False)
    inter.to_parquet(out / "interactions.parquet", index=False)
    (out / "schema.json").write_text(
        '{"users": [{"name": "user_id", "kind": "id", "required": true},\n'
        '           {"name": "headline", "kind": "text"}, {"name": "country", "kind": "categorical"}],\n'
        ' "items": [{"name": "item_id", "kind": "id", "required": true},\n'
        '           {"name": "text", "kind": "text", "required": true}, {"name": "topic", "kind": "categorical"}],\n'
        ' "interactions": [{"name": "user_id", "kind": "id", "required": true},\n'
        '                  {"name": "item_id", "kind": "id", "required": true},\n'
        '                  {"name": "timestamp", "kind": "timestamp", "required": true},\n'
        '                  {"name": "rating", "kind": "numeric", "min_value": 1}]}\n')


def write_books():
    rng, users, items, inter = make(seed=3)
    out = HERE / "tables_books"
    out.mkdir(exist_ok=True)
    authors = {"cooking": ["Julia Child", "Ottolenghi", "Nigella"], "code": ["Knuth", "Hopper", "Ritchie"]}
    books = pd.DataFrame({"isbn": items["item_id"].str.replace("p", "978"),
                          "title": items["text"].str.replace("Notes on ", "").str.capitalize(),
                          "author": [authors[t][j % 3] for j, t in enumerate(items["topic"])],
                          "year": rng.integers(1960, 2024, len(items)),
                          "publisher": rng.choice(["Penguin", "O'Reilly", "Knopf"], len(items))})
    books = books.rename(columns={"isbn": "item_id"})
    ratings = np.where(inter["same"], rng.choice([0, 7, 8, 9, 10], len(inter)), rng.choice([0, 2, 4, 5], len(inter)))
    inter = pd.DataFrame({"user_id": inter["user_id"], "item_id": inter["item_id"].str.replace("p", "978"),
                          "rating": ratings})
    users[["user_id"]].assign(age=rng.integers(18, 70, len(users))).to_csv(out / "users.csv", index=False)
    books.to_csv(out / "items.csv", index=False)
    inter.to_csv(out / "interactions.csv", index=False)


if __name__ == "__main__":
    write_csv()
    write_parquet()
    write_books()
