"""hf_gpt2: our models written as Hugging Face GPT-2 folders and read back, proven equal.

Everything runs offline on tiny models: transformers' own GPT-2 implementation and the
``tokenizers`` library are the references our logits, ids and greedy continuations must match.
"""

import json
import re
import shutil

import pytest
import tokenizers
import torch
import transformers
from conftest import SHARED_DATA
from safetensors.torch import load_file, save_file

import evaluate
import finetune_classifier
import finetune_lora_classifier
import finetune_qlora_instructions
import hf_gpt2
import showcase
from classifier import (
    GPTClassifier,
    encode_text,
    evaluate_accuracy,
    load_classifier,
    normalize_text,
    predict,
)
from data_utils import pad_batch
from export_hf import to_hf
from finetuning import load_sst2_splits, sst2_loaders
from generation import generate_ids
from instructions import answer, load_instruction_model, make_qlora
from lora import apply_lora
from model import GPTConfig, GPTModel
from support import hub
from support.errors import CheckpointError
from tokenizer import BPETokenizer

TOL = 1e-5
CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "It's a wonderful film -- the actors don't miss a beat; 1,234,567 reasons to see it!\n"
          * 20)
HOSTILE = [
    "", " ", "\r\n", "a\r\nb\r\n\r\n", "  leading and trailing  ", "tabs\tand\vform\ffeeds",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧", "combining e\u0301 a\u0308\u0308\u0308 Z\u0336",
    "digits 12345678901234567890 3.14159", "中文 日本語 한국어 العربية עברית",
    "zero\u200bwidth and nbsp\u00a0here", "null \x00 byte and \x7f del", "'s 'LL 'Re ''quoted''",
    "\U0010ffff private \ue000 use", "...!!!???---", "a" * 300, "\n" * 7 + "x" + " " * 9,
]


def tiny_tokenizer(text: str = CORPUS, vocab_size: int = 300) -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(text, vocab_size)
    return tok


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, context_length=64, n_layer=2, n_head=2, n_embd=32,
                    **overrides)
    model = GPTModel(cfg).eval()
    with torch.no_grad():  # LayerNorms away from 1 / 0, so a swapped name would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    model = tiny_model((tok.vocab_size + 63) // 64 * 64)  # main.py's padded table
    out = to_hf(model, tok, tmp_path_factory.mktemp("hf"), {"dataset": "test text"})
    return model, out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------- export: model


def test_exported_base_has_identical_logits(tok, exported):
    model, out = exported
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.vocab_size == model.config.vocab_size == 320
    torch.manual_seed(1)
    random_ids = torch.randint(0, model.config.vocab_size, (4, 64))
    text_ids = torch.tensor([tok.encode(CORPUS)[:64]])
    with torch.no_grad():
        for ids in (random_ids, text_ids):
            assert max_diff(hf(ids).logits, model(ids)) <= TOL
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= files
    assert "test text" in (out / "README.md").read_text(encoding="utf-8")


def test_a_model_without_biases_exports_zero_biases(tok, tmp_path):
    model = tiny_model(tok.vocab_size, bias=False)
    hf = transformers.GPT2LMHeadModel.from_pretrained(to_hf(model, tok, tmp_path)).eval()
    ids = torch.randint(0, tok.vocab_size, (2, 30))
    with torch.no_grad():
        assert max_diff(hf(ids).logits, model(ids)) <= TOL


def test_greedy_generate_equals_ours_token_for_token(tok, exported):
    model, out = exported
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for prompt in ("First Citizen:", "Speak", "It's a"):
        ours = list(generate_ids(model, tok.encode(prompt), 40, temperature=0,
                                 vocab_size=tok.vocab_size, stop_id=tok.eot_id))
        inputs = hf_tok(prompt, return_tensors="pt")
        theirs = hf.generate(**inputs, do_sample=False, max_new_tokens=40)[0].tolist()
        theirs = theirs[inputs["input_ids"].size(1):]
        if theirs and theirs[-1] == tok.eot_id:  # HF keeps the stop token, ours does not
            theirs = theirs[:-1]
        assert theirs == ours and len(ours) > 0
        # (generate_text would mask the tokens that break UTF-8: this untrained model picks them)
        assert hf_tok.decode(theirs) == tok.decode(ours)


def test_generate_on_the_export_s_own_settings_stays_within_the_context(tok, tmp_path):
    # export_hf.py's docstring: model.generate(**inputs), nothing else. A short context and a
    # long prompt: new tokens past n_positions would index a missing position embedding.
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=tok.vocab_size, context_length=24, n_layer=1,
                               n_head=2, n_embd=16))
    out = to_hf(model, tok, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for prompt in ("ROMEO:", "First Citizen: Before we proceed"):
        inputs = hf_tok(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = hf.generate(**inputs)
        assert inputs["input_ids"].size(1) < ids.size(1) <= 24
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == 24
    assert "max_new_tokens" not in json.loads((out / "generation_config.json").read_text())
    assert "The context is 24 tokens" in (out / "README.md").read_text(encoding="utf-8")


def test_padded_ids_are_suppressed_like_ours(tok, exported):
    _, out = exported
    config = json.loads((out / "generation_config.json").read_text())
    assert config["suppress_tokens"] == list(range(tok.vocab_size, 320))
    assert config["eos_token_id"] == tok.eot_id


# ---------------------------------------------------------------------------- export: tokenizer


def assert_same_ids(tok: BPETokenizer, out, texts: list[str]) -> None:
    fast = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(out)
    for text in texts:
        ours = tok.encode(text)
        assert fast.encode(text).ids == ours, text[:80]
        assert auto(text)["input_ids"] == ours, text[:80]
        assert auto.decode(ours) == tok.decode(ours)


def test_tokenizer_ids_equal_on_hostile_unicode(tok, exported):
    assert_same_ids(tok, exported[1], HOSTILE)


def test_special_token_text_is_the_special_id_in_transformers(tok, exported):
    """Hugging Face reads "<|endoftext|>" in text as the token: our allowed_special="all"."""
    fast = tokenizers.Tokenizer.from_file(str(exported[1] / "tokenizer.json"))
    text = "end<|endoftext|>start"
    assert fast.encode(text).ids == tok.encode(text, allowed_special="all")
    assert tok.eot_id in fast.encode(text).ids


def test_a_lone_surrogate_cannot_reach_the_tokenizers_library(tok, exported):
    """Ours encodes it (surrogatepass); a Rust string cannot hold one, so HF refuses it."""
    fast = tokenizers.Tokenizer.from_file(str(exported[1] / "tokenizer.json"))
    assert tok.decode(tok.encode("a\ud800b")) == "a\ud800b"
    with pytest.raises((UnicodeEncodeError, TypeError, ValueError)):
        fast.encode("a\ud800b")


needs_shakespeare = pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare.txt").is_file(),
                                       reason="shared data not available")


@needs_shakespeare
def test_tokenizer_ids_equal_on_held_out_shakespeare_and_sst2(tmp_path):
    from data_utils import load_sst2, load_tinyshakespeare, split_shakespeare

    parts = split_shakespeare(load_tinyshakespeare(SHARED_DATA))
    tok = tiny_tokenizer(parts["train"][:200_000], vocab_size=1024)
    out = to_hf(tiny_model(1024), tok, tmp_path)
    lines = parts["test"].split("\n\n")
    texts = [parts["test"], *lines]
    if (SHARED_DATA / "sst2" / "dev.tsv").is_file():
        sst2 = load_sst2(SHARED_DATA)
        texts += [s for split in ("val", "test") for s, _ in sst2[split]]
    assert_same_ids(tok, out, texts)


def test_the_byte_table_is_gpt2s(tok):
    table = hf_gpt2.bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("!")] == "!"
    assert list(table)[:3] == [33, 34, 35]  # GPT-2's byte ids: printable bytes first


# ---------------------------------------------------------------------------- export: finetuned


def classifier_inputs(tok: BPETokenizer, texts: list[str], ctx: int):
    return pad_batch([encode_text(tok, t, ctx) for t in texts], pad_id=0)


def assert_classifier_equal(model: GPTClassifier, tok: BPETokenizer, out) -> None:
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    texts = ["a gorgeous , witty film", "it 's a bore", "", "😀 " * 5, "x " * 200]
    ids, lengths = classifier_inputs(tok, texts, model.config.context_length)
    batch = hf_tok([normalize_text(t) for t in texts], padding=True, truncation=True,
                   return_tensors="pt")
    for row, length in enumerate(lengths):  # same ids: text + <|endoftext|>, cut at the left
        assert batch["input_ids"][row, :length].tolist() == ids[row, :length].tolist()
    with torch.no_grad():
        assert max_diff(hf(**batch).logits, model(ids, lengths)) <= TOL


def random_head(model: GPTClassifier) -> GPTClassifier:
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        model.head.bias.copy_(torch.tensor([0.7, -0.4]))  # a bias the export must keep
    return model.eval()


def test_full_classifier_exports_as_sequence_classification(tok, tmp_path):
    model = random_head(GPTClassifier(tiny_model(tok.vocab_size)))  # no spare row: one is added
    out = to_hf(model, tok, tmp_path)
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tok.vocab_size
    assert_classifier_equal(model, tok, out)


def test_lora_classifier_exports_merged(tok, tmp_path):
    model = GPTClassifier(tiny_model(320))
    apply_lora(model.gpt, r=2, alpha=4, targets=("qkv", "out_proj", "fc_in"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    assert_classifier_equal(random_head(model), tok, to_hf(model, tok, tmp_path))


def test_qlora_model_exports_as_its_dequantized_base_plus_update(tok, tmp_path):
    model = make_qlora(tiny_model(320), r=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    model.eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(to_hf(model, tok, tmp_path))
    ids = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        assert max_diff(hf.eval()(ids).logits, model(ids)) <= TOL


# ---------------------------------------------------------------------------- import


def gpt2_format_tokenizer(folder) -> None:
    """A small tokenizer in GPT-2's own layout, trained by the tokenizers library: bytes at ids
    0-255 in GPT-2's order, merge i's token at 256 + i, <|endoftext|> last."""
    trainer_tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    trainer_tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    trainer_tok.train_from_iterator([CORPUS, " ".join(HOSTILE)], trainer)
    merges = json.loads(trainer_tok.to_str())["model"]["merges"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in merges]
    vocab = {c: i for i, c in enumerate(hf_gpt2.bytes_to_unicode().values())}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_gpt2_folder(folder, n_positions: int = 64):
    """A randomly initialised transformers GPT-2, saved with save_pretrained, as the Hub has it."""
    gpt2_format_tokenizer(folder)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(folder)  # vocab.json + merges.txt
    torch.manual_seed(3)
    eot = len(hf_tok) - 1  # <|endoftext|>, last as in GPT-2
    config = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=n_positions, n_embd=48,
                                     n_layer=3, n_head=4, bos_token_id=eot, eos_token_id=eot)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return make_gpt2_folder(tmp_path_factory.mktemp("gpt2"))


def test_gpt2_from_transformers_loads_with_identical_logits(gpt2_folder):
    model, tok = hf_gpt2.from_hf(gpt2_folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    assert model.config.vocab_size == hf.config.vocab_size == tok.vocab_size
    assert tok.pattern == hf_gpt2.GPT2_SPLIT_PATTERN and tok.eot_id == tok.vocab_size - 1
    torch.manual_seed(4)
    ids = torch.randint(0, tok.vocab_size, (3, 64))
    with torch.no_grad():
        assert max_diff(hf(ids).logits, model(ids)) <= TOL


def test_gpt2_tokenizer_loads_with_identical_ids(gpt2_folder, tmp_path):
    _, tok = hf_gpt2.from_hf(gpt2_folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(gpt2_folder)
    only_txt = tmp_path / "txt"  # GPT-2's original files, without tokenizer.json
    only_txt.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (only_txt / name).write_bytes((gpt2_folder / name).read_bytes())
    from_txt = hf_gpt2.tokenizer_from_hf(only_txt)
    assert from_txt.to_dict() == tok.to_dict()
    for text in [CORPUS, *HOSTILE]:
        assert tok.encode(text) == hf_tok(text)["input_ids"], text[:80]
        assert tok.decode(tok.encode(text)) == text


def test_export_then_import_is_the_identity(tok, exported):
    model, out = exported
    back, back_tok = hf_gpt2.from_hf(out)
    assert back_tok.to_dict() == tok.to_dict()
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_foreign_layout_or_config_gets_one_sentence(gpt2_folder, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_bytes((gpt2_folder / name).read_bytes())
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["vocab"] = {s: (i + 1) % len(spec["model"]["vocab"])
                              for s, i in spec["model"]["vocab"].items()}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="does not number its tokens like GPT-2"):
        hf_gpt2.from_hf(tmp_path)
    config = json.loads((gpt2_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="activation_function = 'relu'"):
        hf_gpt2.from_hf(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        hf_gpt2.from_hf(tmp_path)


def test_a_name_offline_says_so_in_one_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no network") as error:
        hf_gpt2.from_hf("gpt2")
    assert "run once with a network" in str(error.value)
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        hub.resolve("./no/such/folder")


# ---------------------------------------------------------------------------- --base gpt2

INSTRUCTIONS = SHARED_DATA / "instruction-data-1100.jsonl"
needs_data = pytest.mark.skipif(
    not all((SHARED_DATA / name).is_file() for name in
            ("sst2/train.tsv", "tinyshakespeare.txt", "instruction-data-1100.jsonl")),
    reason=f"real data not found in {SHARED_DATA}")
QUICK = ["--max-steps", "2", "--eval-interval", "2", "--device", "cpu", "--dtype", "float32",
         "--data-dir", str(SHARED_DATA)]


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory):
    """A GPT-2 folder with room for instruction prompts (256 positions)."""
    return make_gpt2_folder(tmp_path_factory.mktemp("gpt2-base"), n_positions=256)


def test_a_gpt2_base_gets_gpt2_sized_defaults_unless_a_flag_is_given():
    ours = finetune_classifier.parse_args([])
    assert (ours.lr, ours.batch_size, ours.max_length) == (5e-4, 32, None)
    gpt2 = finetune_classifier.parse_args(["--base", "gpt2"])
    assert (gpt2.lr, gpt2.batch_size, gpt2.max_length) == (5e-5, 8, 128)
    lora = finetune_lora_classifier.parse_args(["--base", "gpt2", "--batch-size", "4"])
    assert (lora.lr, lora.batch_size, lora.max_length) == (5e-4, 4, 128)
    qlora = finetune_qlora_instructions.parse_args(["--base", "gpt2-medium", "--lr", "1e-3"])
    assert (qlora.lr, qlora.batch_size, qlora.max_length) == (1e-3, 8, 256)
    assert not hasattr(qlora, "size_defaults")  # not written into metrics.json's args


def test_base_gpt2_offline_says_so_in_one_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for script in (finetune_classifier, finetune_lora_classifier, finetune_qlora_instructions):
        with pytest.raises(FileNotFoundError, match="^Cannot download gpt2: there is no network"):
            script.main(["--base", "gpt2"])
    with pytest.raises(FileNotFoundError, match="^Cannot download gpt2: there is no network"):
        evaluate.main(["--checkpoint", "gpt2"])


def test_load_base_reads_ours_or_gpt2(gpt2_folder, tmp_path):
    model, tok, meta = hf_gpt2.load_base(gpt2_folder)
    assert meta == {"hf_base": str(gpt2_folder)} and tok.eot_id == tok.vocab_size - 1
    with pytest.raises(FileNotFoundError, match="run python main.py first"):
        hf_gpt2.load_base(tmp_path / "model_weights.pth")  # a missing .pth stays ours


def sst2_accuracy(model, tok) -> float:
    """GLUE dev accuracy with the batches the scripts score with (--batch-size 8, x2)."""
    splits = load_sst2_splits(SHARED_DATA, 0, 0)
    loader = sst2_loaders({"test": splits["test"]}, tok, 128, batch_size=8, seed=0)["test"]
    return evaluate_accuracy(model, loader)


@needs_data
@pytest.mark.slow
def test_both_classifier_scripts_train_on_a_gpt2_folder_and_reload_identically(
        gpt2_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sst2 = [*QUICK, "--base", str(gpt2_base), "--train-size", "32"]
    assert finetune_classifier.main([*sst2, "--skip-random-init"]) == 0
    assert finetune_lora_classifier.main([*sst2, "--lr", "1e-3"]) == 0
    metrics = json.loads((tmp_path / "runs/classifier/metrics.json").read_text())
    assert metrics["args"]["lr"] == 5e-5 and metrics["args"]["max_length"] == 128
    for path in ("classifier.pth", "lora_classifier.pth"):
        model, tok, meta = load_classifier(path)  # LoRA: onto the GPT-2 folder it recorded
        assert sst2_accuracy(model, tok) == meta["dev_acc"], path
    assert meta["base_path"] == str(gpt2_base)
    label, probs = predict_both(gpt2_base)
    assert label in probs


def predict_both(base):
    """The LoRA classifier with its base given, and found from its metadata: one answer."""
    stored, tok, _ = load_classifier("lora_classifier.pth")
    given, _, _ = load_classifier("lora_classifier.pth", base=base)
    text = "A charming, often affecting journey."
    assert predict(stored, tok, text) == predict(given, tok, text)
    return predict(given, tok, text)


@needs_data
@pytest.mark.slow
def test_qlora_trains_on_a_gpt2_folder_and_reloads_answering_the_same(
        gpt2_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert finetune_qlora_instructions.main(
        [*QUICK, "--base", str(gpt2_base), "--data-file", str(INSTRUCTIONS), "--train-size",
         "16", "--samples", "1", "--max-new-tokens", "4"]) == 0
    sample = json.loads((tmp_path / "runs/qlora-instruct/samples.jsonl").read_text())
    model, tok, meta = load_instruction_model("qlora_adapters.pth")
    assert meta["base_path"] == str(gpt2_base)
    assert answer(model, tok, sample["instruction"], sample["context"],
                  max_new_tokens=4, seed=1337) == sample["tuned_answer"]


@needs_data
@pytest.mark.slow
def test_evaluate_scores_a_gpt2_folder(gpt2_folder, tmp_path):
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--checkpoint", str(gpt2_folder), "--data-dir", str(SHARED_DATA),
                          "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["training"] == {"hf_base": str(gpt2_folder)}
    assert 0 < record["model"]["bits_per_char"] < 1.2 * record["untrained"]["bits_per_char"]


def test_the_app_offers_and_loads_a_gpt2_folder_as_its_base(gpt2_folder, tmp_path, monkeypatch):
    link = tmp_path / "gpt2"
    link.symlink_to(gpt2_folder, target_is_directory=True)
    monkeypatch.setenv("LLM_APP_BASE", "")
    assert "gpt2" in showcase.checkpoint_choices(showcase.SPECS["base"], tmp_path)
    assert "gpt2" not in showcase.checkpoint_choices(showcase.SPECS["lora"], tmp_path)
    assert showcase.file_stamp(link) == showcase.file_stamp(link / "model.safetensors")
    model, tok, meta = showcase.load_model("base", link, link, "cpu")
    assert model.config.context_length == 64 and meta["hf_base"] == str(link)


def test_a_weight_of_the_wrong_shape_is_named_with_the_shapes_the_file_stores(gpt2_folder,
                                                                              tmp_path):
    # GPT-2 stores c_fc.weight as a Conv1D's [in, out] = (48, 192); ours is its transpose. The
    # sentence must give the shapes as the file has them, or the user edits the wrong axis.
    folder = tmp_path / "gpt2"
    shutil.copytree(gpt2_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(48, 100)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=re.escape(
            "(transformer.h.1.mlp.c_fc.weight should be (48, 192), the file holds (48, 100))")):
        hf_gpt2.from_hf(folder)


@pytest.mark.parametrize("base", ["x" * 5000, "x" * 5000 + ".pth"], ids=["bare", "pth"])
def test_a_base_name_longer_than_any_file_name_is_one_sentence(base):
    with pytest.raises((CheckpointError, FileNotFoundError),
                       match=r"^No (checkpoint|model) at x{20,}… \(5,0\d\d characters\)"):
        hf_gpt2.load_base(base)
