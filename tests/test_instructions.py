"""Tests for instructions.py: template, response-only targets, truncation, QLoRA, reloading."""

import pytest
import torch
import torch.nn.functional as F

from checkpoint import read_checkpoint, save_checkpoint, weights_fingerprint
from generation import text_mask
from instructions import (
    IGNORE_INDEX,
    KIND,
    answer,
    answer_records,
    encode_example,
    encode_examples,
    format_example,
    format_prompt,
    inference_model,
    instruction_dataloader,
    load_instruction_model,
    make_qlora,
    response_loss,
    sample_records,
    save_instruction_adapters,
    stream_answer,
)
from lora import LoRALayer, lora_layers
from model import GPTConfig, GPTModel
from quantization import is_quantized
from support.errors import CheckpointError
from tokenizer import BPETokenizer
from training import lm_loss

TEXT = ("### Instruction:\nName a colour.\n\n### Input:\nThe sky.\n\n### Response:\n"
        "The sky is blue, and the grass is green.\n") * 20
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["qkv", "out_proj", "fc_in", "fc_out"]}


def backends() -> list[str]:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return ["scratch"]
    return ["scratch", "bitsandbytes"]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(TEXT, 300)
    return tok


def tiny_gpt(seed: int = 0, context_length: int = 64) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=320, context_length=context_length, n_layer=2,
                              n_head=2, n_embd=64))


def record(instruction: str, response: str, context: str = "") -> dict:
    return {"instruction": instruction, "context": context, "response": response,
            "category": "general"}


# ---------------------------------------------------------------------------- template


def test_format_prompt_known_answer():
    assert format_prompt("Add 2 and 3.") == "### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    assert format_prompt("  Summarise.\n", context="\nA long text. ") == (
        "### Instruction:\nSummarise.\n\n### Input:\nA long text.\n\n### Response:\n")
    assert format_example(record("Say hi.", " Hi! ")) == \
        "### Instruction:\nSay hi.\n\n### Response:\nHi!"


def test_format_prompt_refuses_non_text():
    with pytest.raises(ValueError, match="instruction must be text"):
        format_prompt(None)
    with pytest.raises(ValueError, match="context must be text"):
        format_prompt("Hi", context=3)


# ---------------------------------------------------------------------------- targets


def test_prompt_is_masked_and_response_plus_eot_are_the_targets(tokenizer):
    r = record("Name a colour.", "Blue.", context="The sky.")
    (inputs, targets), truncated = encode_example(tokenizer, r, context_length=64)
    prompt = tokenizer.encode(format_prompt(r["instruction"], r["context"]))
    response = tokenizer.encode("Blue.") + [tokenizer.eot_id]
    assert not truncated
    assert inputs == prompt + response[:-1]  # the model never reads the final <|endoftext|>
    assert len(targets) == len(inputs)
    assert targets == [IGNORE_INDEX] * (len(prompt) - 1) + response
    assert targets[-1] == tokenizer.eot_id  # the model learns to stop


def test_long_response_is_cut_to_fit_and_long_prompt_is_dropped(tokenizer):
    short = record("Name a colour.", "Blue.")
    long_response = record("Name a colour.", "The sky is blue. " * 40)
    long_prompt = record("Name a colour. " * 40, "Blue.")
    prompt_len = len(tokenizer.encode(format_prompt("Name a colour.")))
    ctx = prompt_len + 10

    (inputs, targets), truncated = encode_example(tokenizer, long_response, ctx)
    assert truncated and len(inputs) == ctx  # the whole window is used
    response = tokenizer.encode(long_response["response"].strip())
    assert targets[prompt_len - 1:] == response[:ctx + 1 - prompt_len]  # the response's start
    assert targets[:prompt_len - 1] == [IGNORE_INDEX] * (prompt_len - 1)  # the whole prompt

    assert encode_example(tokenizer, long_prompt, ctx) == (None, False)
    examples, stats = encode_examples([short, long_response, long_prompt, short], tokenizer, ctx)
    assert len(examples) == 3
    assert (stats.whole, stats.truncated, stats.dropped, stats.kept) == (2, 1, 1, 3)
    assert "1 dropped" in stats.summary() and f"{ctx}-token window" in stats.summary()


def test_a_prompt_that_exactly_fills_the_window_keeps_one_target(tokenizer):
    r = record("Name a colour.", "Blue.")
    prompt_len = len(tokenizer.encode(format_prompt(r["instruction"])))
    (inputs, targets), truncated = encode_example(tokenizer, r, prompt_len)
    assert truncated and len(inputs) == prompt_len
    assert [t for t in targets if t != IGNORE_INDEX] == tokenizer.encode("Blue.")[:1]


def test_batches_pad_targets_with_ignore_and_shuffle_reproducibly(tokenizer):
    records = [record("Name a colour.", "Blue" + "!" * i) for i in range(10)]
    examples, _ = encode_examples(records, tokenizer, 64)
    loader = instruction_dataloader(examples, 4, tokenizer.eot_id, shuffle=False)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4, 2]  # evaluation keeps the last short batch
    inputs, targets = batches[0]
    for row, (ids, tgt) in enumerate(examples[:4]):
        assert inputs[row, :len(ids)].tolist() == ids
        assert targets[row, :len(tgt)].tolist() == tgt
        assert (targets[row, len(tgt):] == IGNORE_INDEX).all()

    def order(seed):
        loader = instruction_dataloader(examples, 4, tokenizer.eot_id, shuffle=True, seed=seed)
        return [b[0].tolist() for b in loader]
    assert order(1) == order(1) and order(1) != order(2)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        instruction_dataloader(examples, 11, tokenizer.eot_id)
    with pytest.raises(ValueError, match="No instruction examples"):
        instruction_dataloader([], 4, tokenizer.eot_id)


def test_loss_and_gradient_come_only_from_response_positions(tokenizer):
    examples, _ = encode_examples([record("Name a colour.", "Blue."),
                                   record("Name a fruit.", "A ripe pear.")], tokenizer, 64)
    inputs, targets = next(iter(instruction_dataloader(examples, 2, tokenizer.eot_id, False)))
    logits = tiny_gpt()(inputs).detach().requires_grad_(True)
    loss = lm_loss(lambda _: logits, (inputs, targets))
    loss.backward()
    scored = targets != IGNORE_INDEX
    assert (logits.grad[~scored] == 0).all() and (logits.grad[scored].abs().sum(-1) > 0).all()
    expected = F.cross_entropy(logits[scored], targets[scored])
    assert torch.allclose(loss, expected)


def test_response_loss_weighs_every_response_token_equally(tokenizer):
    examples, _ = encode_examples([record("Name a colour.", "Blue."),
                                   record("Name a fruit.", "A ripe pear, " * 5)], tokenizer, 64)
    model = tiny_gpt().eval()
    one_batch = response_loss(model, instruction_dataloader(examples, 2, 0, shuffle=False))
    two_batches = response_loss(model, instruction_dataloader(examples, 1, 0, shuffle=False))
    assert one_batch == pytest.approx(two_batches, rel=1e-5)


# ---------------------------------------------------------------------------- QLoRA


@pytest.mark.parametrize("backend", backends())
def test_qlora_trains_only_the_adapters(backend, tokenizer):
    model = make_qlora(tiny_gpt(), backend, **LORA)
    assert all(is_quantized(layer.linear) for layer in lora_layers(model))
    assert len(lora_layers(model)) == 8
    examples, _ = encode_examples([record("Name a colour.", "Blue.")] * 2, tokenizer, 64)
    batch = next(iter(instruction_dataloader(examples, 2, tokenizer.eot_id, shuffle=False)))
    with torch.no_grad():  # B starts at zero: give the adapters a value so A gets a gradient
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.1)
    lm_loss(model, batch).backward()
    for name, param in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0
        else:
            assert not param.requires_grad and param.grad is None, name


@pytest.mark.parametrize("backend", backends())
def test_make_qlora_twice_is_a_no_op(backend):
    model = make_qlora(tiny_gpt(), backend, **LORA)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 300, (2, 10))
    before = model(idx)
    make_qlora(model, backend, **LORA)
    assert {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)} == layers
    assert not any(isinstance(layer.linear, LoRALayer) for layer in layers.values())
    assert state.keys() == model.state_dict().keys()
    assert torch.equal(model(idx), before)


@pytest.fixture
def base_path(tmp_path, tokenizer):
    path = tmp_path / "base.pth"
    save_checkpoint(path, tiny_gpt(seed=0), tokenizer)
    return path


def trained_adapters(base_path, tokenizer, backend, out):
    """A QLoRA model on the saved base with nonzero adapters (stand-in for training), saved."""
    base = tiny_gpt(seed=0)
    fingerprint = weights_fingerprint(base.state_dict())
    model = make_qlora(base, backend, **LORA)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.1)
    save_instruction_adapters(out, model, tokenizer, base_path=base_path,
                              base_fingerprint=fingerprint, backend=backend, lora=LORA, steps=7)
    return model.eval()


@pytest.mark.parametrize("backend", backends())
def test_reload_requantizes_the_base_and_gives_identical_logits(backend, base_path, tokenizer,
                                                                 tmp_path):
    out = tmp_path / "adapters.pth"
    model = trained_adapters(base_path, tokenizer, backend, out)
    ckpt = read_checkpoint(out, kind=KIND)
    assert all(k.endswith(("lora_A", "lora_B")) for k in ckpt["state_dict"])  # adapters only
    meta = ckpt["metadata"]
    assert meta["backend"] == backend and meta["base_path"] == str(base_path)
    assert meta["lora"] == LORA and meta["steps"] == 7

    loaded, loaded_tokenizer, loaded_meta = load_instruction_model(out)
    assert not loaded.training and loaded_meta == meta
    assert loaded_tokenizer.to_dict() == tokenizer.to_dict()
    idx = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
        assert not torch.equal(loaded(idx), tiny_gpt(seed=0).eval()(idx))  # adapters are used


@pytest.mark.parametrize("backend", backends())
def test_the_dense_inference_model_answers_with_the_same_tokens(backend, base_path, tokenizer,
                                                                tmp_path):
    """inference_model (what the app and ask.py answer with) folds NF4 and LoRA into plain
    weights: the same logits up to float rounding, the same sampled tokens for a seed."""
    out = tmp_path / "adapters.pth"
    quantized = trained_adapters(base_path, tokenizer, backend, out)
    dense, _, meta = load_instruction_model(out, dense=True)
    assert type(dense) is GPTModel and not dense.training and meta["steps"] == 7
    assert not lora_layers(dense) and not any(is_quantized(m) for m in dense.modules())
    assert all(type(m) is torch.nn.Linear for name, m in dense.named_modules()
               if name.endswith(tuple(LORA["targets"])))
    idx = torch.randint(0, 300, (2, 12))
    # Float32 on every CPU, either backend: bitsandbytes' layers never take its packed
    # AVX512-BF16 kernel, which computes in bf16 (quantization._bitsandbytes_linear4bit).
    with torch.no_grad():
        torch.testing.assert_close(dense(idx), quantized(idx), rtol=1e-4, atol=1e-5)
    for seed in range(3):
        settings = dict(max_new_tokens=30, temperature=0.9, top_k=None, seed=seed)
        assert answer(dense, tokenizer, "Name a colour.", **settings) == \
            answer(quantized, tokenizer, "Name a colour.", **settings)
    assert any(is_quantized(m) for m in quantized.modules())  # the 4-bit model is untouched
    assert type(inference_model(quantized)) is GPTModel


def test_wrong_base_is_refused_with_a_clear_error(base_path, tokenizer, tmp_path):
    out = tmp_path / "adapters.pth"
    trained_adapters(base_path, tokenizer, "scratch", out)
    other = tmp_path / "other.pth"
    save_checkpoint(other, tiny_gpt(seed=1), tokenizer)
    with pytest.raises(CheckpointError, match="different base model"):
        load_instruction_model(out, base=other)


def test_missing_base_or_adapters_say_what_to_run(base_path, tokenizer, tmp_path):
    out = tmp_path / "adapters.pth"
    trained_adapters(base_path, tokenizer, "scratch", out)
    base_path.unlink()
    with pytest.raises(FileNotFoundError, match="which is not here: pass --base"):
        load_instruction_model(out)
    with pytest.raises(FileNotFoundError, match="finetune_qlora_instructions.py first"):
        load_instruction_model(tmp_path / "nothing.pth")
    save_checkpoint(base_path, tiny_gpt(), tokenizer)
    with pytest.raises(CheckpointError, match="expected 'qlora-instruct'"):
        load_instruction_model(base_path)


@pytest.mark.parametrize("edit, entry", [
    (lambda m: m["lora"].pop("alpha"), "lora.alpha"),
    (lambda m: m["lora"].update(r=True), "lora.r"),
    (lambda m: m["lora"].update(dropout=1.5), "lora.dropout"),
    (lambda m: m.update(backend="foo"), "backend"),
    (lambda m: m.update(base_path=["base.pth"]), "base_path"),
])
def test_bad_metadata_is_one_checkpoint_error_naming_the_entry(base_path, tokenizer, tmp_path,
                                                               edit, entry):
    out = tmp_path / "adapters.pth"
    trained_adapters(base_path, tokenizer, "scratch", out)
    ckpt = torch.load(out, weights_only=True)
    edit(ckpt["metadata"])
    torch.save(ckpt, out)
    with pytest.raises(CheckpointError, match=rf"metadata entry '{entry}' is .*\.$"):
        load_instruction_model(out)


# ---------------------------------------------------------------------------- answering


@pytest.mark.parametrize("instruction, context", [
    ("", ""),
    ("Summarise this. " * 200, "A very long context. " * 200),  # far past the window
    ("Translate 🙂🚀 into words ✨", "ünïcödé"),
])
def test_answer_returns_text_for_odd_input(instruction, context, tokenizer):
    model = tiny_gpt(context_length=32).eval()
    text = answer(model, tokenizer, instruction, context, max_new_tokens=12, seed=0)
    assert isinstance(text, str)
    pieces = list(stream_answer(model, tokenizer, instruction, context, max_new_tokens=12, seed=0))
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces).strip() == text


def test_greedy_answer_is_the_continuation_of_the_prompt(tokenizer):
    model = tiny_gpt().eval()
    prompt_ids = tokenizer.encode(format_prompt("Name a colour."))
    ids = torch.tensor([prompt_ids])
    expected, clean, state = [], text_mask(tokenizer), 0  # greedy among clean-text tokens
    with torch.no_grad():
        for _ in range(5):
            logits = clean.restrict(model(ids)[:, -1, :tokenizer.vocab_size], state)
            next_id = int(logits.argmax())
            if next_id == tokenizer.eot_id:
                break
            expected.append(next_id)
            state = clean.advance(state, next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    got = "".join(stream_answer(model, tokenizer, "Name a colour.", max_new_tokens=5,
                                temperature=0))
    # The bytes are valid UTF-8 up to a character the 5 tokens may cut off (not shown).
    assert got == b"".join(map(tokenizer.token_bytes, expected)).decode("utf-8", "ignore")


def test_samples_are_the_first_held_out_prompts_that_leave_half_the_window(tokenizer):
    short, long = record("Name a colour.", "Blue."), record("Name a colour. " * 12, "Blue.")
    assert len(tokenizer.encode(format_prompt(long["instruction"]))) > 64 // 2
    records = [long, short, long, record("Name a fruit.", "A pear."), short]
    assert sample_records(records, tokenizer, 64, 2) == [records[1], records[3]]
    assert sample_records(records, tokenizer, 64, 9) == [records[1], records[3], records[4]]
    # "Name a colour." makes a 20-token prompt, "Name a fruit." one of 22: half of 40 fits one.
    assert sample_records(records, tokenizer, 40, 9) == [records[1], records[4]]
    assert sample_records(records, tokenizer, 38, 9) == []
    model = tiny_gpt().eval()
    assert answer_records(model, tokenizer, records[:2], max_new_tokens=6, seed=3) == [
        answer(model, tokenizer, r["instruction"], r["context"], max_new_tokens=6, seed=3)
        for r in records[:2]]
