"""export_hf.py: every checkpoint kind our scripts write becomes a folder transformers loads,
and the loaded model computes what ours computes."""

import subprocess
import sys

import pytest
import torch
import transformers
from conftest import ROOT
from test_hf_gpt2 import TOL, max_diff, tiny_model, tiny_tokenizer

import export_hf
from checkpoint import make_checkpoint, save_checkpoint, weights_fingerprint
from classifier import GPTClassifier, load_classifier, save_classifier, save_lora_classifier
from instructions import load_instruction_model, make_qlora, save_instruction_adapters
from lora import apply_lora
from support.errors import CheckpointError
from support.files import atomic_save


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def base(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model_weights.pth"
    model = tiny_model((tok.vocab_size + 63) // 64 * 64)
    save_checkpoint(path, model, tok, dataset="tinyshakespeare", val_loss=1.4567, step=300)
    return path, model


def export(checkpoint, out, *extra) -> None:
    assert export_hf.main(["--checkpoint", str(checkpoint), "--out", str(out), *extra]) == 0


def randomize_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
            if name.startswith("head."):
                p.normal_(0, 0.3)


def assert_same_class_logits(ours: GPTClassifier, out) -> None:
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(0, 250, (3, 40))
    with torch.no_grad():
        assert max_diff(hf(ids[:1]).logits, ours.eval()(ids[:1])) <= TOL
        assert max_diff(hf(ids).logits, ours(ids)) <= TOL  # no pad id inside: full rows


def test_base_checkpoint_exports_with_its_model_card(base, tmp_path, capsys):
    path, model = base
    export(path, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    with torch.no_grad():
        assert max_diff(hf(ids).logits, model(ids)) <= TOL
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "tinyshakespeare" in card and "1.4567" in card and "| kind | \"gpt\" |" in card
    assert "model.safetensors" in capsys.readouterr().out


def test_full_classifier_checkpoint_exports(base, tok, tmp_path):
    _, model = base
    classifier = GPTClassifier(tiny_model(model.config.vocab_size, seed=5))
    randomize_adapters(classifier)
    save_classifier(tmp_path / "classifier.pth", classifier, tok, dev_acc=0.716)
    export(tmp_path / "classifier.pth", tmp_path / "hf")
    ours, _, _ = load_classifier(tmp_path / "classifier.pth")
    assert_same_class_logits(ours, tmp_path / "hf")
    assert "0.716" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def test_lora_classifier_checkpoint_exports_merged(base, tok, tmp_path):
    base_path, base_model = base
    classifier = GPTClassifier(tiny_model(base_model.config.vocab_size))  # = base's weights
    lora = {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "out_proj"]}
    apply_lora(classifier.gpt, r=2, alpha=4.0, targets=lora["targets"])
    randomize_adapters(classifier)
    save_lora_classifier(tmp_path / "lora.pth", classifier, tok, base_path=base_path,
                         base_fingerprint=weights_fingerprint(base_model.state_dict()),
                         lora=lora)
    export(tmp_path / "lora.pth", tmp_path / "hf")
    ours, _, _ = load_classifier(tmp_path / "lora.pth")
    assert_same_class_logits(ours, tmp_path / "hf")


def test_qlora_checkpoint_exports_as_a_dense_model(base, tok, tmp_path):
    base_path, base_model = base
    lora = {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "out_proj", "fc_in"]}
    model = make_qlora(tiny_model(base_model.config.vocab_size), r=2, alpha=4.0,
                       targets=lora["targets"])
    randomize_adapters(model)
    save_instruction_adapters(tmp_path / "qlora.pth", model, tok, base_path=base_path,
                              base_fingerprint=weights_fingerprint(base_model.state_dict()),
                              backend="scratch", lora=lora)
    export(tmp_path / "qlora.pth", tmp_path / "hf")
    ours, _, _ = load_instruction_model(tmp_path / "qlora.pth")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 250, (2, 50))
    with torch.no_grad():
        assert max_diff(hf(ids).logits, ours(ids)) <= TOL


def test_a_kind_it_cannot_export_gets_one_sentence(base, tok, tmp_path):
    _, model = base
    atomic_save(make_checkpoint("train-state", model.state_dict(), model.config, tok),
                tmp_path / "state.pth")
    with pytest.raises(CheckpointError, match="holds a 'train-state' model; export_hf.py exports"):
        export(tmp_path / "state.pth", tmp_path / "hf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder name"):
        export(tmp_path / "state.pth", tmp_path / "file")


@pytest.mark.slow
def test_the_script_says_error_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "export_hf.py", "--checkpoint",
                             str(tmp_path / "none.pth"), "--out", str(tmp_path / "hf")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: No checkpoint at") and result.stderr.count("\n") == 1
