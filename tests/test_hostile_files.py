"""Hostile files: whatever a file holds, loading it ends in one sentence naming the file and
its fault, within seconds, without allocating more than the file's own bytes back.

The files are the probe's (benchmarks/probe_hostile_files.py builds each one the way an
attacker or a hand edit would). Bombs (memory and time) run through their script in a child
process, whose exit code, stderr, seconds and peak memory are measured; the other faults run
the same script's ``main`` in this process.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import probe_hostile_files as probe
from checkpoint import load_checkpoint
from classifier import GPTClassifier, load_classifier, save_classifier
from hf_gpt2 import from_hf
from lora import LoRALayer
from model import GPTModel
from support.cli import USER_ERRORS
from support.datasets import read_instruction_records
from support.errors import CheckpointError
from support.metrics import compared_rows
from tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parent.parent
BASELINE_MB = 600  # python + torch + the scripts' imports take about 230 MB
pytestmark = pytest.mark.slow  # hostile-file probes, bombs in child processes

# case -> (the file the sentence names, relative to the case's folder; what it says)
BOMBS = {
    "pth: weights expanded from one number (1.6 GB model)":
        ("expanded.pth", r"holds a tensor of shape \(320, 4096\) backed by only 4 bytes"),
    "pth: every weight a view of one storage (1.2 GB model)":
        ("shared.pth", "its weights claim more bytes than the file holds"),
    "pth: 400 MB deflated into a zip member":
        ("deflated.pth", "is compressed"),
    "pth: catastrophic split regex":
        ("regex.pth", "split pattern .* is not one this loader runs"),
    "tokenizer.json: catastrophic split regex (main.py --tokenizer)":
        ("evil.json", "split pattern .* is not one this loader runs"),
    "HF: config.json declares a 1.6 GB model":
        ("hf_big", r"its config does not match its weights \(transformer.wte.weight should be "
                   r"\(320, 4096\)"),
    "HF: catastrophic split regex":
        ("hf_regex/tokenizer.json", "split pattern .* is not one this loader runs"),
    "LoRA: rank 500,000, no adapter tensors (1 GB)":
        ("lora_rank.pth", "the adapter tensors differ from the ones r=500000"),
    "LoRA: rank 500,000 on the wrong base":
        ("lora_rank_wrong.pth", "was trained on a different base model"),
}
FAULTS = {
    "pth: a folder named x.pth": ("x.pth", "is a folder, not a checkpoint file"),
    "pth: int64 weights": ("int.pth", "its weight tok_emb.weight holds torch.int64 values"),
    "pth: complex weights": ("cplx.pth", "holds torch.complex64 values"),
    "pth: NaN weight": ("nan.pth", "its weight ln_f.weight holds NaN or infinite values"),
    "pth: no config": ("noconfig.pth", "holds no config"),
    "pth: config n_embd 'wide'": ("badcfg.pth", "its config entry 'n_embd' is 'wide'"),
    "pth: tokenizer without merges": ("nomerges.pth", "the tokenizer has no 'merges' entry"),
    "HF: truncated model.safetensors":
        ("hf_cut/model.safetensors", "is corrupted or not a safetensors file"),
    "HF: config.json without n_layer": ("hf_nolayer/config.json", "'n_layer' is missing"),
    "HF: config.json n_head 3 (n_embd 32)":
        ("hf_heads/config.json", r"'n_embd' \(32\) is not divisible by 'n_head' \(3\)"),
    "HF: tokenizer.json without model": ("hf_nomodel/tokenizer.json", "has no 'model' entry"),
    "HF: tensor named h.0": ("hf_names", "transformer.h.0.ln_1.weight should be"),
    "LoRA: NaN adapters": ("lora_nan.pth", "lora_A holds NaN or infinite values"),
    "LoRA: base retrained since, same name":
        ("lora_retrained.pth", "retrained.pth has been trained again since .* run python "
                               "finetune_lora_classifier.py again"),
    "JSONL: a line nested 100,000 deep": ("deep.jsonl", "holds no Dolly-schema records"),
    "resume: step hand-edited to a string":
        ("runs/r/state.pt", r"'training.step' is invalid \('5'\); start the run again "
                            "without --resume"),
}


def test_every_case_of_the_probe_is_tested():
    assert set(BOMBS) | set(FAULTS) == set(probe.CASES)


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs/ and relative base paths land here
    return tmp_path


@pytest.mark.parametrize("case", BOMBS)
def test_a_bomb_is_one_sentence_within_seconds_in_little_memory(env, case):
    name, says = BOMBS[case]
    row = probe.run_case(ROOT, probe.CASES[case](env), env, timeout=60)
    assert row["rc"] == 1, row
    assert re.fullmatch(rf"error: (tokenizer file )?{re.escape(str(env / name))}\W.*{says}.*",
                        row["stderr"]), row
    assert row["s"] < 30 and row["peak_mb"] < BASELINE_MB, row


@pytest.mark.parametrize("case", FAULTS)
def test_a_faulty_file_is_one_sentence_naming_it(env, case):
    name, says = FAULTS[case]
    script, *argv = probe.CASES[case](env)
    main = importlib.import_module(script.removesuffix(".py")).main
    with pytest.raises(USER_ERRORS) as err:
        main(argv)
    message = str(err.value)
    assert (env / name).as_posix() in message or name in message, message
    assert re.search(says, message) and "\n" not in message, message


# ---------------------------------------------------------------------------- the rules


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """What was allocated at a size a file declares: every GPTModel built off the meta device
    and every LoRA layer."""
    made: list[str] = []
    init, lora_init = GPTModel.__init__, LoRALayer.__init__

    def gpt(self, config):
        init(self, config)
        if not self.tok_emb.weight.is_meta:
            made.append(f"GPTModel n_embd={config.n_embd}")

    def lora(self, linear, r=8, *args, **kwargs):
        made.append(f"LoRALayer r={r}")
        lora_init(self, linear, r, *args, **kwargs)

    monkeypatch.setattr(GPTModel, "__init__", gpt)
    monkeypatch.setattr(LoRALayer, "__init__", lora)
    return made


@pytest.mark.parametrize("edit", [probe.expanded_weights, probe.shared_storage])
def test_weights_the_file_does_not_back_build_nothing(tmp_path, built, edit):
    path = probe.edited(tmp_path, "bomb.pth", edit)
    built.clear()
    with pytest.raises(CheckpointError, match=f"^{path}"):
        load_checkpoint(path)
    assert built == [] and path.stat().st_size < 20e6


@pytest.mark.parametrize("rank, fingerprint", [(200_000, None), (200_000, "0" * 64)])
def test_an_adapter_rank_the_file_does_not_hold_allocates_nothing(tmp_path, built, rank,
                                                                  fingerprint):
    path = probe.lora_file(tmp_path, "lora.pth", rank=rank, fingerprint=fingerprint)
    built.clear()
    with pytest.raises(CheckpointError, match=f"^{path}"):
        load_classifier(path, base=tmp_path / "base.pth")
    assert built == ["GPTModel n_embd=32"]  # the base, and no adapter


def test_a_healthy_adapter_file_still_loads(tmp_path, built):
    path = probe.lora_file(tmp_path, "lora.pth")
    built.clear()
    model, _, _ = load_classifier(path, base=tmp_path / "base.pth")
    assert built == ["GPTModel n_embd=32"] + ["LoRALayer r=2"] * 4 and not model.training


def test_only_the_known_split_patterns_load_from_a_file(tmp_path):
    tok = probe.tokenizer()
    for pattern in ("", r"\w+|\s+"):
        d = dict(tok.to_dict(), pattern=pattern)
        if pattern:
            with pytest.raises(ValueError, match="split pattern '.*' is not one this loader"):
                BPETokenizer.from_dict(d)
        else:
            assert BPETokenizer.from_dict(d).pattern == ""
    assert BPETokenizer(r"\w+|\s+").encode("a b")  # code may still choose its own


def test_a_zip_member_declaring_more_than_the_file_holds_is_refused(tmp_path):
    path = probe.base(tmp_path)
    data = bytearray(path.read_bytes())
    # The central directory's entry of the last member: its sizes claim 1 GB.
    entry = data.rindex(b"PK\x01\x02")
    data[entry + 20:entry + 28] = (1 << 30).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"^{path} is truncated or corrupted: its member"):
        load_checkpoint(path)


def test_a_deeply_nested_line_among_good_ones_is_skipped(tmp_path, capsys):
    path = probe.deep_jsonl(tmp_path)
    with path.open("a") as f:
        f.write('{"instruction": "Hi", "context": "", "response": "Hello"}\n')
    records, _ = read_instruction_records(path, None, download=False, verify=False)
    assert records == [{"instruction": "Hi", "context": "", "response": "Hello",
                        "category": "general"}]
    said = capsys.readouterr()
    assert f"{path}: skipped 1 lines" in said.out + said.err


def test_the_probe_runs_a_script_and_measures_it(tmp_path):
    # Linux carries a peak RSS across fork and exec: a parent as big as a long test run must
    # not show up as the script's own peak.
    ballast = torch.ones(BASELINE_MB << 18)  # 4 bytes each: BASELINE_MB MB, touched
    row = probe.run_case(ROOT, ["sample.py", "--model", str(tmp_path / "none.pth")], tmp_path,
                         timeout=60)
    assert row["rc"] == 1 and row["stderr"].startswith("error: No checkpoint at")
    assert 50 < row["peak_mb"] < BASELINE_MB and row["s"] > 0
    del ballast


def test_labels_the_head_does_not_hold_build_no_head(tmp_path, monkeypatch):
    path = tmp_path / "clf.pth"
    save_classifier(path, GPTClassifier(probe.tiny_model()), probe.tokenizer())
    ckpt = torch.load(path, weights_only=True)
    ckpt["metadata"]["labels"] = ["x"] * 1_000_000  # one string, a million references: 2 MB
    torch.save(ckpt, path)
    widths: list[int] = []
    init = torch.nn.Linear.__init__
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda self, i, o, *a, **k: (
        widths.append(o), init(self, i, o, *a, **k))[1])
    with pytest.raises(CheckpointError, match=f"^{path}: its metadata entry 'labels' is invalid"):
        load_classifier(path)
    assert max(widths, default=0) < 1000 and path.stat().st_size < 5e6


def test_merges_spelling_more_than_the_vocabulary_limit_are_refused_unspelled(tmp_path):
    # 511 merges spell "a" * 512; 256 more, each a different last byte, give 256 tokens of 512
    # bytes, and every pair of those a token of 1,024 bytes: 64 MiB from a 1 MB file.
    chain = [[97, 97]] + [[256 + i, 97] for i in range(509)]
    last = 256 + len(chain) - 1
    halves = [[last, b] for b in range(256)]
    first = 256 + len(chain)
    pairs = [[first + i, first + j] for i in range(256) for j in range(256)]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"version": 1, "pattern": "", "special_tokens": {},
                                "merges": chain + halves + pairs}))
    with pytest.raises(ValueError, match=f"^tokenizer file {path} .* more than 64 MiB of tokens"):
        BPETokenizer.load(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 10**6) | st.floats()
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> Path:
    return probe.hf_folder(tmp_path_factory.mktemp("hf"), "gpt2", lambda out: None)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["config.json", "tokenizer.json"]), data=st.data())
def test_any_entry_of_a_hugging_face_file_loads_or_is_one_sentence(hf_source, tmp_path, name,
                                                                   data):
    folder = tmp_path / "hf"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(hf_source, folder)
    content = json.loads((folder / name).read_text())
    where = content["model"] if name == "tokenizer.json" and data.draw(st.booleans()) else content
    where[data.draw(st.sampled_from(sorted(where)))] = data.draw(JSON)
    (folder / name).write_text(json.dumps(content))
    try:
        from_hf(folder)
    except USER_ERRORS as e:
        assert str(folder) in str(e) and "\n" not in str(e)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(part=st.sampled_from(["config", "tokenizer"]), data=st.data())
def test_any_config_or_tokenizer_entry_of_a_checkpoint_loads_or_is_one_sentence(tmp_path, part,
                                                                                data):
    ckpt = torch.load(probe.base(tmp_path), weights_only=True)
    ckpt[part][data.draw(st.sampled_from(sorted(ckpt[part])))] = data.draw(JSON)
    path = tmp_path / "edited.pth"
    torch.save(ckpt, path)
    try:
        load_checkpoint(path)
    except USER_ERRORS as e:
        assert str(path) in str(e) and "\n" not in str(e)


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000, '{"rows": [1, 2]}',
                                     '{"rows": [{"total": 3}]}', "\udcff"],
                         ids=["nested", "rows-not-dicts", "row-without-model", "not-utf8"])
def test_an_earlier_result_that_is_not_one_is_not_compared(tmp_path, capsys, content):
    path = tmp_path / "metrics.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    assert compared_rows(path, "same") == []
    assert f"note: {path} is not a finetune_classifier.py result" in capsys.readouterr().out


def test_the_app_shows_the_sentence_for_a_bomb(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    probe.edited(tmp_path, "model_weights.pth", probe.expanded_weights)
    monkeypatch.setenv("LLM_APP_DIR", str(tmp_path))
    monkeypatch.setenv("LLM_APP_DEVICE", "cpu")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run(timeout=60)
    assert not at.exception
    errors = [error.value for tab in at.tabs for error in tab.error]
    assert any("model_weights.pth was refused: it holds a tensor of shape" in e for e in errors)


def test_run_logs_that_are_not_json_are_skipped_with_a_problem_each(tmp_path):
    from showcase import read_runs

    deep = "[" * 100_000 + "]" * 100_000
    for name, file, content in [("x", "metrics.json", deep), ("y", "metrics.jsonl", deep),
                                ("z", "metrics.json", "\udcff")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(content, errors="surrogateescape")
    runs = read_runs(tmp_path)
    assert not runs.summaries and runs.curves == {"y": []}
    assert [p.split(":")[0] for p in runs.problems] == [
        str(tmp_path / "x"), str(tmp_path / "y" / "metrics.jsonl"), str(tmp_path / "z")]
