"""The sentiment classifier: pooling, text normalization, predict, and both checkpoint kinds."""

import pytest
import torch
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import save_checkpoint, weights_fingerprint
from classifier import (
    LABELS,
    GPTClassifier,
    encode_text,
    load_classifier,
    normalize_text,
    predict,
    save_classifier,
    save_lora_classifier,
)
from lora import apply_lora, freeze_all_but_lora
from model import GPTConfig, GPTModel
from support.errors import CheckpointError
from tokenizer import BPETokenizer

CFG = GPTConfig(vocab_size=320, context_length=32, n_layer=2, n_head=2, n_embd=32)
LORA = {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "out_proj", "fc_in", "fc_out"]}
TEXT = ("it 's a charming and often affecting journey . unflinchingly bleak and desperate . "
        "the acting , costumes , music , cinematography and sound are all astounding . ") * 20


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(TEXT, 300)
    return tok


def make_classifier(seed: int = 0) -> GPTClassifier:
    torch.manual_seed(seed)
    return GPTClassifier(GPTModel(CFG)).eval()


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter (LoRA B and the head too) non-trivial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("pad", [0, 1, 5])
def test_padding_never_changes_the_logits(pad):
    model = make_classifier()
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    alone = model(ids)
    junk = torch.randint(0, CFG.vocab_size, (1, pad))  # whatever the pad tokens are
    padded = model(torch.cat([ids, junk], dim=1), torch.tensor([ids.size(1)]))
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-6)


def test_a_batch_of_different_lengths_equals_one_at_a_time():
    model = make_classifier()
    seqs = [[5, 17, 42], [8, 99, 3, 7, 7, 1, 2], [11]]
    batch = torch.zeros(3, 7, dtype=torch.long)
    for row, seq in enumerate(seqs):
        batch[row, : len(seq)] = torch.tensor(seq)
    together = model(batch, torch.tensor([len(s) for s in seqs]))
    apart = torch.cat([model(torch.tensor([s])) for s in seqs])
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-5)
    assert together.shape == (3, len(LABELS))


def test_pooling_reads_the_last_real_token():
    """Changing the last real token changes the prediction; changing a pad token does not."""
    model = make_classifier()
    ids = torch.tensor([[5, 17, 42, 8, 0, 0]])
    lengths = torch.tensor([4])
    base = model(ids, lengths)
    assert not torch.allclose(model(ids.index_put((torch.tensor([0]), torch.tensor([3])),
                                                  torch.tensor(9)), lengths), base)
    torch.testing.assert_close(model(ids.index_put((torch.tensor([0]), torch.tensor([5])),
                                                   torch.tensor(9)), lengths), base)


# ---------------------------------------------------------------------------- text


@pytest.mark.parametrize("text, expected", [
    ("I don't like it (really)!", "i do n't like it ( really ) !"),
    ('It\'s a "great" film, isn\'t it?', "it 's a `` great '' film , is n't it ?"),
    ("Can't. Won't... Cannot!", "ca n't . wo n't ... can not !"),
    ("You're gonna love it; we'll see, I'd say I'm sure.",
     "you 're gon na love it ; we 'll see , i 'd say i 'm sure ."),
    ("Mr. Smith's film cost $1.8 million.", "mr. smith 's film cost $ 1.8 million ."),
    ("The actors' work -- superb: 10,000 stars, 5/5", "the actors ' work -- superb : 10,000 "
     "stars , 5/5"),
    ("A well-crafted writer/director debut", "a well-crafted writer/director debut"),
    ("\u201cCurly\u201d quotes\u2026 and \u2018single\u2019 ones", "`` curly '' quotes ... and "
     "'single ' ones"),
    ("WOW!?! I LOVED it \U0001F60D", "wow !?! i loved it \U0001F60D"),
    ("  spaces \t and\nnewlines  ", "spaces and newlines"),
    ("", ""),
])
def test_normalize_text_known_answers(text, expected):
    assert normalize_text(text) == expected


SST2_SENTENCES = [  # GLUE dev sentences: already normalized, so they must come back unchanged
    "it 's a charming and often affecting journey . ",
    "the draw ( for `` big bad love '' ) is a solid performance by arliss howard . ",
    "if the movie succeeds in instilling a wary sense of ` there but for the grace of god , ' it "
    "is far too self-conscious to draw you deeply into its world . ",
    "it does n't believe in itself , it has no sense of humor ... it 's just plain bored . ",
    "you 're gon na like this movie . ",
    "audrey tatou has a knack for picking roles that magnify her outrageous charm , and in this "
    "literate french comedy , she 's as morning-glory exuberant as she was in amélie . ",
]


@pytest.mark.parametrize("sentence", SST2_SENTENCES)
def test_sst2_sentences_are_already_normal(sentence):
    assert normalize_text(sentence) == sentence.strip()


@pytest.mark.skipif(not (SHARED_DATA / "sst2" / "dev.tsv").is_file(), reason="no SST-2 data")
def test_every_glue_dev_sentence_is_already_normal():
    from data_utils import load_sst2

    changed = [s for s, _ in load_sst2(SHARED_DATA)["test"] if normalize_text(s) != s]
    assert changed == []


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii") | st.sampled_from("é’“”…😍"), max_size=60))
def test_normalize_text_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_encode_text_ends_with_the_end_of_text_token_and_keeps_the_end(tokenizer):
    ids = encode_text(tokenizer, "a charming journey", 32)
    assert ids[-1] == tokenizer.eot_id and len(ids) > 1
    assert encode_text(tokenizer, "", 32) == [tokenizer.eot_id]
    long = encode_text(tokenizer, "bleak " * 500 + "and desperate", 32)
    assert len(long) == 32 and long[-1] == tokenizer.eot_id
    assert tokenizer.decode(long[:-1]).endswith("and desperate")


# ---------------------------------------------------------------------------- predict


@pytest.mark.parametrize("text", ["", "   ", "a charming journey", "x" * 5000,
                                  "bleak " * 1000, "\U0001F60D\U0001F44D\U0001F525",
                                  "\x00\ud800 odd \uffff"])
def test_predict_gives_a_label_and_probabilities_for_any_text(tokenizer, text):
    model = make_classifier()
    label, probs = predict(model, tokenizer, text)
    assert label in LABELS and list(probs) == list(LABELS)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert label == max(probs, key=probs.get)


def test_predict_rejects_non_text(tokenizer):
    with pytest.raises(ValueError, match="needs text"):
        predict(make_classifier(), tokenizer, None)


def test_predict_normalizes_the_text(tokenizer):
    model = make_classifier()
    perturb(model)
    assert predict(model, tokenizer, "It's CHARMING!") == predict(model, tokenizer,
                                                                  "it 's charming !")


# ---------------------------------------------------------------------------- gradients


def test_full_finetuning_updates_every_weight():
    model = make_classifier().train()
    ids = torch.randint(0, CFG.vocab_size, (4, CFG.context_length))
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 1, 0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_lora_trains_only_adapters_and_head():
    model = make_classifier().train()
    apply_lora(model.gpt, **LORA)
    freeze_all_but_lora(model, trainable_extra=("head",))
    perturb(model)  # B != 0, so A gets a gradient too
    ids = torch.randint(0, CFG.vocab_size, (4, 8))
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 1, 0, 1])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias", "gpt.blocks.0.attn.qkv.lora_A"} <= trainable


# ---------------------------------------------------------------------------- checkpoints


def test_classifier_save_load_gives_identical_outputs(tmp_path, tokenizer):
    model = make_classifier()
    perturb(model)
    path = tmp_path / "classifier.pth"
    save_classifier(path, model, tokenizer, dev_acc=0.5)
    loaded, tok, meta = load_classifier(path)
    ids = torch.randint(0, CFG.vocab_size, (3, 10))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert tok.to_dict() == tokenizer.to_dict() and meta["dev_acc"] == 0.5
    assert loaded.labels == LABELS and not loaded.training


@pytest.fixture
def lora_setup(tmp_path, tokenizer):
    """A saved base, a LoRA classifier trained on it (perturbed), and its saved checkpoint."""
    torch.manual_seed(0)
    base = GPTModel(CFG)
    base_path = tmp_path / "base.pth"
    save_checkpoint(base_path, base, tokenizer)
    fingerprint = weights_fingerprint(base.state_dict())
    model = GPTClassifier(base)
    apply_lora(model.gpt, **LORA)
    freeze_all_but_lora(model, trainable_extra=("head",))
    perturb(model)
    path = tmp_path / "lora.pth"
    save_lora_classifier(path, model, tokenizer, base_path=base_path,
                         base_fingerprint=fingerprint, lora=LORA)
    return model.eval(), path, base_path


def test_lora_checkpoint_is_small_and_reloads_to_identical_logits(tmp_path, tokenizer,
                                                                   lora_setup):
    model, path, base_path = lora_setup
    loaded, _, meta = load_classifier(path)
    ids = torch.randint(0, CFG.vocab_size, (3, 10))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert meta["lora"] == LORA and meta["base_path"] == str(base_path)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.endswith(("lora_A", "lora_B")) or k.startswith("head.") for k in stored)
    full = tmp_path / "full.pth"
    save_classifier(full, model, tokenizer)
    adapter_bytes = sum(t.numel() * t.element_size() for t in stored.values())
    assert adapter_bytes < 0.25 * sum(t.numel() * t.element_size()
                                      for t in torch.load(full, weights_only=True)
                                      ["state_dict"].values())
    assert path.stat().st_size < full.stat().st_size


def test_lora_checkpoint_takes_the_base_from_an_explicit_path(tmp_path, lora_setup):
    model, path, base_path = lora_setup
    moved = tmp_path / "elsewhere" / "base.pth"
    moved.parent.mkdir()
    base_path.rename(moved)
    loaded, _, _ = load_classifier(path, base=moved)
    ids = torch.randint(0, CFG.vocab_size, (2, 6))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_load_classifier_refuses_a_base_model_and_explains_a_missing_file(tmp_path, tokenizer):
    path = tmp_path / "base.pth"
    save_checkpoint(path, GPTModel(CFG), tokenizer)
    with pytest.raises(CheckpointError, match="holds a 'gpt' model, expected 'classifier' or "
                       "'lora-classifier'"):
        load_classifier(path)
    with pytest.raises(FileNotFoundError, match="finetune_classifier.py"):
        load_classifier(tmp_path / "missing.pth")


def edit_metadata(path, edit) -> None:
    """Rewrite a saved checkpoint with ``edit`` applied to its metadata, as a hand would."""
    ckpt = torch.load(path, weights_only=True)
    if callable(edit):
        edit(ckpt["metadata"])
    else:
        ckpt["metadata"] = edit
    torch.save(ckpt, path)


@pytest.mark.parametrize("kind, edit, entry", [
    ("full", lambda m: m.update(labels=3), "labels"),
    ("full", lambda m: m.update(labels=["only one"]), "labels"),
    ("full", ["not", "a", "dict"], "metadata"),
    ("lora", lambda m: m["lora"].pop("r"), "lora.r"),
    ("lora", lambda m: m["lora"].update(alpha="4"), "lora.alpha"),
    ("lora", lambda m: m["lora"].update(targets="qkv"), "lora.targets"),
    ("lora", lambda m: m.update(lora=[2, 4.0]), "lora"),
    ("lora", lambda m: m.update(base_path=5), "base_path"),
    ("lora", lambda m: m.pop("base_fingerprint"), "base_fingerprint"),
])
def test_bad_metadata_is_one_checkpoint_error_naming_the_entry(tmp_path, tokenizer, lora_setup,
                                                               kind, edit, entry):
    _, path, _ = lora_setup
    if kind == "full":
        path = tmp_path / "classifier.pth"
        save_classifier(path, make_classifier(), tokenizer)
    edit_metadata(path, edit)
    with pytest.raises(CheckpointError, match=rf"metadata entry '{entry}' is .*\.$"):
        load_classifier(path)


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize("head", [torch.tensor(1.0), None, torch.zeros(3, CFG.n_embd)])
def test_a_head_without_one_row_per_label_is_one_sentence(tmp_path, tokenizer, lora_setup,
                                                          kind, head):
    """A hand-edited head (a single number, none at all, a row too many) is named, never a
    traceback (len() of a 0-d tensor) and never a model with the wrong number of labels."""
    _, path, _ = lora_setup
    if kind == "full":
        path = tmp_path / "classifier.pth"
        save_classifier(path, make_classifier(), tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"].pop("head.weight")
    if head is not None:
        ckpt["state_dict"]["head.weight"] = head
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: .*'labels'.*head"):
        load_classifier(path)
