"""Hostile files and inputs: nothing may raise anything but the project's clear errors.

Property tests (hypothesis) throw arbitrary unicode and sizes at every user-facing entry
point; hand-made files probe the loaders. Per-module tests cover the rest: checkpoint
payloads in test_checkpoint.py, data files in test_data_utils.py, adapters on the wrong base
in test_classifier.py and test_instructions.py.
"""

import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint import load_checkpoint, save_checkpoint
from classifier import GPTClassifier, load_classifier, predict, save_classifier
from generation import generate_text
from instructions import answer, format_prompt
from model import GPTConfig, GPTModel
from support.errors import CheckpointError
from support.file_checks import MAX_TOKEN_BYTES
from tokenizer import BPETokenizer

# Any code point, lone surrogates included, and long strings now and then.
ANY_TEXT = st.text(st.characters(codec=None), max_size=200) | st.text(max_size=5000)
PROFILE = settings(max_examples=60, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train("it's a fine, funny film; i do n't like it. ### Instruction: Response:\n" * 40, 300)
    return tok


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=320, context_length=32, n_layer=1, n_head=2,
                              n_embd=32)).eval()


@pytest.fixture(scope="module")
def classifier(model) -> GPTClassifier:
    return GPTClassifier(model).eval()


@PROFILE
@given(text=ANY_TEXT)
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@PROFILE
@given(prompt=ANY_TEXT, max_new_tokens=st.integers(-5, 8),
       temperature=st.floats(allow_nan=True, allow_infinity=True, width=32),
       top_k=st.none() | st.integers(-3, 500), top_p=st.none() | st.floats(-1, 2))
def test_generate_text_either_works_or_says_what_is_wrong(model, tokenizer, prompt,
                                                          max_new_tokens, temperature, top_k,
                                                          top_p):
    try:
        out = generate_text(model, tokenizer, prompt, max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=0)
    except ValueError as e:
        assert str(e).endswith(".") and "\n" not in str(e)  # one clear sentence
    else:
        assert isinstance(out, str)


@PROFILE
@given(text=ANY_TEXT)
def test_predict_gives_probabilities_for_any_text(classifier, tokenizer, text):
    label, probs = predict(classifier, tokenizer, text)
    assert label in probs and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


@PROFILE
@given(instruction=ANY_TEXT, context=ANY_TEXT)
def test_instruction_template_and_answer_take_any_text(model, tokenizer, instruction, context):
    prompt = format_prompt(instruction, context)
    assert prompt.endswith("### Response:\n")
    assert isinstance(answer(model, tokenizer, instruction, context, max_new_tokens=3, seed=0),
                      str)


@pytest.mark.parametrize("merges, reason", [
    ("abc", "merges as a string"),
    ([[1, 2, 3]], "a merge with three ids"),
    ([["a", "b"]], "ids that are not numbers"),
    ([[97, 97]] + [[256 + i, 97] for i in range(MAX_TOKEN_BYTES)], "a chain of merges "
     "spelling a token longer than the limit (a memory bomb)"),
])
def test_hostile_tokenizer_files_get_a_clear_error(tmp_path, merges, reason):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"version": 1, "pattern": "", "special_tokens": {},
                                "merges": merges}))
    with pytest.raises(ValueError, match="tokenizer.json"):
        BPETokenizer.load(path)


@pytest.mark.slow  # writes and reads a file of millions of merges
def test_a_huge_merge_list_is_refused_before_it_is_built(tmp_path):
    path = tmp_path / "tokenizer.json"
    merges = ",".join(["[97,97]"] * 1_000_001)
    header = '{"version": 1, "pattern": "", "special_tokens": {}, "merges": ['
    path.write_text(header + merges + "]}")
    with pytest.raises(ValueError, match="more than"):
        BPETokenizer.load(path)


def test_a_checkpoint_with_a_hostile_tokenizer_is_refused(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["tokenizer"]["special_tokens"] = ["not", "a", "dict"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="invalid config or tokenizer"):
        load_checkpoint(path)


def test_a_checkpoint_with_a_wrongly_typed_config_is_refused(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["n_layer"] = "four"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.fixture
def built_on(monkeypatch) -> list[str]:
    """The device of every GPTModel built from now on ("meta" costs no memory)."""
    devices: list[str] = []
    init = GPTModel.__init__

    def spy(self, config):
        init(self, config)
        devices.append(self.tok_emb.weight.device.type)

    monkeypatch.setattr(GPTModel, "__init__", spy)
    return devices


@pytest.mark.parametrize("save", ["gpt", "classifier"])
def test_a_config_declaring_a_huge_model_fails_fast_without_building_it(tmp_path, model,
                                                                        tokenizer, built_on,
                                                                        save):
    # The small weights of a 1-layer, 32-wide model under a config of 8 layers, 65,536 wide:
    # building that model would allocate ~51 GB.
    path = tmp_path / "huge.pth"
    if save == "gpt":
        save_checkpoint(path, model, tokenizer)
    else:
        save_classifier(path, GPTClassifier(model), tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"].update(n_embd=65536, n_layer=8)
    torch.save(ckpt, path)
    built_on.clear()
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"^{path}: its config does not match its weights"):
        (load_checkpoint if save == "gpt" else load_classifier)(path)
    assert time.perf_counter() - start < 10  # a meta build takes well under a second
    assert built_on == ["meta"]  # shapes only: nothing of the claimed size was allocated


def test_a_config_with_more_layers_than_the_file_has_tensors_is_refused_at_once(
        tmp_path, model, tokenizer, built_on):
    path = tmp_path / "deep.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["n_layer"] = 10**9  # even on the meta device, a billion modules take ages
    torch.save(ckpt, path)
    built_on.clear()
    with pytest.raises(CheckpointError, match="declares 1000000000 layers"):
        load_checkpoint(path)
    assert built_on == []
