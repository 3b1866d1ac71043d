"""Tokenizers against outside references: Meta's LLaMA-3 tokenizer (llama-models), HF
`tokenizers` via transformers' tiktoken converter, and transformers' own GGUF tokenizer."""

import importlib.util
import sys
import types

import pytest

from ff_jax import assets
from ff_jax.model.tokenizer import (
    LLAMA3_SPECIALS,
    byte_tokenizer,
    load_tokenizer,
)

MIXED = ("Hello, world! Café naïve résumé — Ærøskøbing; 東京は日本の首都です。北京欢迎你 "
         "🚀🎉 👩‍👩‍👧 can't won't 12345 3.14\n\n\tTabs  and   spaces\r\n")
# Special-token text inside content is plain text (Meta's reference default, and our rule).
WITH_SPECIAL_TEXT = "before <|eot_id|> after <|begin_of_text|>"


def _meta_reference_tokenizer():
    """Load llama_models/llama3/tokenizer.py by path (the package itself is never imported: its
    dependencies are not installed). Its one relative import, `..tokenizer_utils`, is satisfied by
    registering stand-in parent packages under a private name."""
    root = assets.package_dir("llama_models")
    for name, folder in (("_meta_ref", root), ("_meta_ref.llama3", root / "llama3")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules.setdefault(name, package)
    modules = {}
    for name, file in (("_meta_ref.tokenizer_utils", root / "tokenizer_utils.py"),
                       ("_meta_ref.llama3.tokenizer", root / "llama3" / "tokenizer.py")):
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["_meta_ref.llama3.tokenizer"].Tokenizer(assets.llama3_tokenizer_model())


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(assets.llama3_tokenizer_model())


@pytest.fixture(scope="module")
def meta():
    return _meta_reference_tokenizer()


@pytest.mark.parametrize("text", [MIXED, WITH_SPECIAL_TEXT, "", " leading space", "x" + " " * 60_000 + "y"])
def test_llama3_ids_equal_meta_reference(llama3, meta, text):
    expected = meta.encode(text, bos=False, eos=False)
    assert llama3.encode(text) == expected
    assert llama3.decode(expected) == meta.decode(expected) == text


def test_llama3_special_ids_and_sizes(llama3, meta):
    assert (llama3.bos_id, llama3.eos_id) == (meta.bos_id, meta.eos_id) == (128000, 128001)
    assert llama3.pad_id == meta.pad_id == 128004
    assert llama3.vocab_size == meta.n_words == 128256
    for name, token_id in meta.special_tokens.items():
        assert llama3.token_to_id(name) == token_id
    assert llama3.token_to_id(" Hello") == meta.encode(" Hello", bos=False, eos=False)[0]
    assert llama3.token_to_id("Hello, world") is None  # several tokens


def test_hf_tokenizer_json_matches_tiktoken(llama3, tmp_path):
    # An independent implementation of the same vocabulary: transformers converts the tiktoken
    # ranks to a `tokenizers` BPE; loading its tokenizer.json must give the same ids.
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converted = TikTokenConverter(vocab_file=str(assets.llama3_tokenizer_model()),
                                  extra_special_tokens=LLAMA3_SPECIALS).converted()
    converted.save(str(tmp_path / "tokenizer.json"))
    from_json = load_tokenizer(tmp_path)  # a directory holding tokenizer.json
    assert from_json.source.endswith("tokenizer.json")
    for text in (MIXED, WITH_SPECIAL_TEXT):
        assert from_json.encode(text) == llama3.encode(text)
    assert (from_json.bos_id, from_json.eos_id, from_json.pad_id) == (128000, 128001, 128004)
    assert from_json.vocab_size == 128256
    ids = from_json.encode(MIXED)
    assert from_json.decode(ids) == MIXED

    # Our own save -> load keeps markers, their ids and atomic encoding.
    from_json.add_special_tokens(["<headline>", "<|eot_id|>"])
    from_json.save(tmp_path / "saved")
    restored = load_tokenizer(tmp_path / "saved")
    text = "a<headline>b <|eot_id|>"
    assert restored.encode(text) == from_json.encode(text)
    assert restored.markers == from_json.markers
    assert restored.vocab_size == from_json.vocab_size == 128257


def test_gguf_tokenizer_matches_transformers_gguf_tokenizer():
    # transformers builds its tokenizer from the same GGUF metadata independently of our code.
    from transformers import AutoTokenizer

    path = assets.smollm2_gguf()
    ours = load_tokenizer(path)
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in (MIXED, "The capital of Germany is Berlin. In 1989 the wall fell; 2,000 people cheered."):
        assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ours.encode(text)) == text
    assert ours.vocab_size == len(reference) == 49152
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)  # the file's bos/eos/padding ids
    assert ours.token_to_id("<|endoftext|>") == reference.convert_tokens_to_ids("<|endoftext|>") == 0
    # The "smollm" pre-tokenizer puts every digit in its own token.
    digits = ours.encode("31415926")
    assert len(digits) == 8 and ours.decode(digits[:1]) == "3"


def test_added_markers_are_atomic_idempotent_and_grow_vocab(llama3):
    tok = load_tokenizer(assets.llama3_tokenizer_model())  # fresh: markers mutate the tokenizer
    before = tok.vocab_size
    ids = tok.add_special_tokens(["<headline>", "<body>", "<head>"])
    assert ids == [before, before + 1, before + 2]
    assert tok.add_special_tokens(["<body>", "<headline>"]) == [before + 1, before]
    assert tok.vocab_size == before + 3
    # An existing special token keeps its id and does not grow the vocabulary...
    assert tok.add_special_tokens(["<|eot_id|>"]) == [128009]
    assert tok.vocab_size == before + 3
    # ...and from now on it is recognised in text, while plain text around markers is unchanged.
    text = "Title<headline>Big news<body>Details <|eot_id|><head>"
    ids = tok.encode(text)
    assert ids == (llama3.encode("Title") + [before] + llama3.encode("Big news") + [before + 1]
                   + llama3.encode("Details ") + [128009, before + 2])
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "plain"]) == [ids, llama3.encode("plain")]
    assert tok.token_to_id("<head>") == before + 2
    with pytest.raises(ValueError, match="non-empty"):
        tok.add_special_tokens([""])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_byte_tokenizer(tmp_path):
    tok = byte_tokenizer(["<sep>"])
    assert tok.vocab_size == 260
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (256, 257, 258)
    text = "é<sep>€"
    assert tok.encode(text) == [0xC3, 0xA9, 259, 0xE2, 0x82, 0xAC]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.bos_id, 104, 105, tok.eos_id]) == "<|begin_of_text|>hi<|end_of_text|>"
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)


def test_bad_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_tokenizer(tmp_path / "does-not-exist")
    sentencepiece = tmp_path / "tokenizer.model"
    sentencepiece.write_bytes(b"\x0a\x80\xff\xfe binary protobuf")
    with pytest.raises(ValueError, match="SentencePiece"):
        load_tokenizer(sentencepiece)
    broken = tmp_path / "ranks.tiktoken"
    broken.write_text("IQ== 0\nnot-a-rank-line\n")
    with pytest.raises(ValueError, match="line 2"):
        load_tokenizer(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


@pytest.mark.parametrize("tied", [False, True])
def test_grow_vocab_to_fit_added_markers(tied):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ff_jax.model import Llama, create_sharded_model, make_mesh, presets
    from ff_jax.model.vocab import grow_vocab

    tok = byte_tokenizer()
    cfg = presets.tiny(vocab_size=tok.vocab_size, tie_embeddings=tied)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = create_sharded_model(cfg, mesh) if tied else Llama(cfg, rngs=nnx.Rngs(0))
    old_table = np.asarray(model.embed.embedding[...])
    markers = tok.add_special_tokens(["<headline>", "<body>", "<price>"])
    grown = grow_vocab(model, tok.vocab_size)

    assert grown.config.vocab_size == tok.vocab_size == cfg.vocab_size + 3
    assert model.config.vocab_size == cfg.vocab_size  # the input model is untouched
    assert model.embed.embedding[...].shape == old_table.shape
    table = np.asarray(grown.embed.embedding[...])
    np.testing.assert_array_equal(table[: cfg.vocab_size], old_table)
    np.testing.assert_allclose(table[markers], np.broadcast_to(old_table.mean(0), (3, cfg.hidden_size)), atol=1e-6)
    if tied:  # the grown table stays sharded on the mesh
        assert isinstance(grown.embed.embedding[...].sharding, jax.sharding.NamedSharding)
    else:
        old_head = np.asarray(model.lm_head.kernel[...])
        np.testing.assert_allclose(np.asarray(grown.lm_head.kernel[...])[:, markers],
                                   np.broadcast_to(old_head.mean(1, keepdims=True), (cfg.hidden_size, 3)), atol=1e-6)

    # Text without markers runs as before; a new token's logit is the mean of the old logits.
    logits = nnx.jit(lambda m, tokens: m(tokens).logits)
    plain = jnp.asarray([tok.encode("hello world")], jnp.int32)
    before, after = logits(model, plain), logits(grown, plain)
    np.testing.assert_allclose(after[..., : cfg.vocab_size], before, atol=1e-5)
    np.testing.assert_allclose(after[..., markers], np.repeat(before.mean(-1, keepdims=True), 3, -1), atol=1e-5)
    with_markers = jnp.asarray([tok.encode("<headline>news<body>texts")], jnp.int32)
    assert with_markers.shape == plain.shape  # same shape: no second compile
    assert np.isfinite(np.asarray(logits(grown, with_markers))).all()
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_vocab(grown, cfg.vocab_size)
