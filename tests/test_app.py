"""The Streamlit showcase, driven headlessly with Streamlit's AppTest.

Without checkpoints every tab must say which command creates what it needs. With tiny real
checkpoints, made here by the project's own scripts, every tab must work: generation shows
exactly what generation.py generates, the classifiers' probabilities are predict()'s, the
instruction model answers, and the tokenizer, attention and metrics views render.
"""

import contextlib
import html
import io
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import ROOT, SHARED_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

APP = str(ROOT / "app.py")
TEXT_STYLE = "white-space:pre-wrap;font-family:monospace"  # app.py's box of generated text
INSTRUCTIONS = SHARED_DATA / "instruction-data-1100.jsonl"
needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "tinyshakespeare.txt").exists() or not INSTRUCTIONS.exists(),
    reason=f"the real data files are not in {SHARED_DATA}")
pytestmark = pytest.mark.slow  # the app on checkpoints its own scripts train


def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding all four checkpoints and their runs/, made by the real scripts at tiny
    scale (in this process, to skip four interpreter start-ups). Built once per session; the
    browser test uses the same folder."""
    folder = tmp_path_factory.getbasetemp() / "app-project"
    if (folder / "ready").exists():
        return folder
    import evaluate
    import finetune_classifier
    import finetune_lora_classifier
    import finetune_qlora_instructions
    import main

    data = ["--data-dir", str(SHARED_DATA)]
    finetune = ["--max-steps", "4", "--train-size", "32", "--batch-size", "8",
                "--eval-interval", "2", *data]
    folder.mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(folder)  # every script writes into the folder it runs in
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # 96 tokens of context: room for an instruction prompt and its answer.
            assert main.main(["--preset", "tiny", "--max-steps", "20", "--context-length", "96",
                              "--sample-tokens", "0", "--instruction-file", str(INSTRUCTIONS),
                              *data]) == 0
            assert evaluate.main(data) == 0
            assert finetune_classifier.main([*finetune, "--skip-random-init"]) == 0
            assert finetune_lora_classifier.main(finetune) == 0
            assert finetune_qlora_instructions.main([*finetune, "--data-file", str(INSTRUCTIONS),
                                                     "--samples", "1",
                                                     "--max-new-tokens", "8"]) == 0
    finally:
        os.chdir(cwd)
    (folder / "ready").touch()
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_project(tmp_path_factory)


def run_app(folder: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("LLM_APP_DIR", str(folder))
    monkeypatch.setenv("LLM_APP_DEVICE", "cpu")
    at = AppTest.from_file(APP, default_timeout=60)
    return at.run(timeout=60)


def chart_titles(at) -> list[str]:
    return [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]


def chart_data(chart) -> list[dict]:
    """The rows an Altair chart was given (Streamlit ships them as Arrow)."""
    dataset = chart.proto.datasets[0].data.data
    return pa.ipc.open_stream(dataset).read_all().to_pylist()


def no_trouble(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# ---------------------------------------------------------------------------- no checkpoints


def test_without_checkpoints_every_tab_says_how_to_make_them(tmp_path, monkeypatch):
    at = run_app(tmp_path, monkeypatch)
    assert not at.exception
    assert "0 of 4 models loaded" in at.tabs[0].markdown[0].value
    commands = [c.value for c in at.tabs[0].code]
    assert commands == ["python main.py",
                        "python main.py && python finetune_classifier.py",
                        "python main.py && python finetune_lora_classifier.py",
                        "python main.py && python finetune_qlora_instructions.py"]
    tabs = {tab.label: tab for tab in at.tabs}
    for name in ("Tokenizer", "Generate", "Attention"):
        assert "not there yet" in tabs[name].info[0].value
        assert [c.value for c in tabs[name].code] == ["python main.py"]
    assert [c.value for c in tabs["Sentiment"].code] == commands[1:3]
    assert [c.value for c in tabs["Instructions"].code] == commands[3:]
    metrics = tabs["Metrics"]
    assert "python main.py" in metrics.info[0].value
    assert "python evaluate.py" in metrics.info[1].value


def test_paths_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_APP_BASE", "models/gpt.pth")
    at = run_app(tmp_path, monkeypatch)
    assert at.selectbox(key="path_base").value == "models/gpt.pth"
    assert at.tabs[0].code[0].value == "python main.py --out models/gpt.pth"
    assert at.tabs[0].code[1].value == ("python main.py --out models/gpt.pth && "
                                        "python finetune_classifier.py --base models/gpt.pth")


def test_commands_quote_paths_for_the_shell(tmp_path):
    import shlex

    from showcase import SPECS, create_command

    command = create_command(SPECS["lora"], tmp_path / "my models" / "lora.pth",
                             tmp_path / "it's $HOME.pth", tmp_path)
    assert [shlex.split(part) for part in command.split(" && ")] == [
        ["python", "main.py", "--out", "it's $HOME.pth"],
        ["python", "finetune_lora_classifier.py", "--base", "it's $HOME.pth",
         "--out", "my models/lora.pth"]]


def test_hand_edited_checkpoints_and_metrics_are_messages_not_crashes(tmp_path, monkeypatch):
    import torch

    from classifier import GPTClassifier, save_classifier
    from model import GPTConfig, GPTModel
    from tokenizer import BPETokenizer

    tokenizer = BPETokenizer()
    tokenizer.train("a fine film, a dull one. " * 20, 260)
    path = tmp_path / "classifier.pth"
    save_classifier(path, GPTClassifier(GPTModel(GPTConfig(vocab_size=260, context_length=8,
                                                           n_layer=1, n_head=1, n_embd=8))),
                    tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["metadata"]["labels"] = 3
    torch.save(ckpt, path)
    for run, summary in [("a", {"quantized_bytes": {"fp32": 100, "nf4": 20}}),
                         ("b", {"rows": [{"model": "m", "dev_acc": 0.5, "trainable": 1,
                                          "total": "ten"}]})]:
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "metrics.json").write_text(json.dumps(summary))
    at = run_app(tmp_path, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert "metadata entry 'labels' is invalid (3)" in at.tabs[0].error[0].value
    warnings = [w.value for w in at.tabs[6].warning]
    assert len(warnings) == 2 and "runs/a/metrics.json: quantized_bytes" in warnings[1]
    assert "runs/b/metrics.json: row 'm'" in warnings[0]
    assert chart_titles(at.tabs[6]) == [  # what is sound still shows
        "Dev accuracy", "GPT-2 124 M, batch 8 x 128 (meta device, nothing allocated)"]


def test_the_sidebar_offers_only_the_app_folders_checkpoints(tmp_path, monkeypatch):
    """A visitor chooses from the .pth files in $LLM_APP_DIR (and the files the environment
    names); there is no text box, so no path outside the folder can be tried."""
    folder, outside = tmp_path / "app", tmp_path / "elsewhere"
    (folder / "old").mkdir(parents=True)
    outside.mkdir()
    for path in (folder / "b.pth", folder / "old" / "a.pth", folder / "notes.txt",
                 folder / "runs" / "x" / "deep" / "c.pth", outside / "secret.pth"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("LLM_APP_QLORA", str(outside / "secret.pth"))
    at = run_app(folder, monkeypatch)
    assert not at.exception
    assert not at.sidebar.text_input  # nothing to type a path into
    assert at.selectbox(key="path_base").options == ["model_weights.pth", "b.pth", "old/a.pth"]
    assert at.selectbox(key="path_qlora").options == [str(outside / "secret.pth"), "b.pth",
                                                      "old/a.pth"]  # the operator's choice
    at.selectbox(key="path_base").select("old/a.pth").run(timeout=60)
    assert not at.exception
    assert "old/a.pth is corrupted or not a checkpoint" in at.tabs[2].error[0].value
    # What a hand-crafted choice would reach is only ever a listed file of the folder.
    assert all(not Path(option).is_absolute() and ".." not in Path(option).parts
               for option in at.selectbox(key="path_lora").options)


def test_the_operator_s_links_are_trusted_and_offered_by_their_name_here(tmp_path):
    """Decided (issue 22): a symbolic link in $LLM_APP_DIR is the operator's choice, as the
    $LLM_APP_* variables are, and is followed; a visitor cannot make one, and sees only its
    name inside the folder, never the path it leads to."""
    from showcase import SPECS, checkpoint_choices, resolve

    folder, outside = tmp_path / "app", tmp_path / "elsewhere"
    (outside / "gpt2").mkdir(parents=True)
    folder.mkdir()
    (outside / "secret.pth").write_bytes(b"x")
    (outside / "gpt2" / "model.safetensors").write_bytes(b"x")
    (folder / "mine.pth").write_bytes(b"x")
    (folder / "link.pth").symlink_to(outside / "secret.pth")
    (folder / "hf").symlink_to(outside / "gpt2")
    choices = checkpoint_choices(SPECS["base"], folder.resolve())
    assert choices == ["model_weights.pth", "link.pth", "mine.pth", "hf"]
    assert all(str(outside) not in choice for choice in choices)
    assert resolve("link.pth", folder).read_bytes() == b"x"  # followed when loaded
    assert "operator's links are trusted" in Path(
        __file__).parents[1].joinpath("README.md").read_text(encoding="utf-8")


def test_bad_devices_are_messages_not_crashes(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_APP_DEVICE", "tpu")
    at = AppTest.from_file(APP, default_timeout=60).run(timeout=60)
    assert not at.exception
    assert "Unknown device 'tpu'" in at.sidebar.error[0].value


# ---------------------------------------------------------------------------- every tab working


@needs_data
def test_overview_loads_all_four_models(project, monkeypatch):
    from checkpoint import load_checkpoint
    from showcase import human_count

    at = run_app(project, monkeypatch)
    no_trouble(at)
    assert "4 of 4 models loaded" in at.tabs[0].markdown[0].value
    model, _, _ = load_checkpoint(project / "model_weights.pth")
    metrics = {}
    for metric in at.tabs[0].metric:
        metrics.setdefault(metric.label, []).append(metric.value)
    assert metrics["Parameters"][0] == human_count(model.num_parameters())
    base, full, lora, qlora = (float(v.rstrip("%")) for v in metrics["Trained"])
    assert base == full == 100.0 and 0 < lora < 10 and 0 < qlora < 100
    assert chart_titles(at.tabs[0]) == ["Parameters changed by training (log scale)",
                                        "Checkpoint size (KB)"]


def test_in_memory_counts_every_parameter_and_buffer_once(project, monkeypatch):
    """The overview's "In memory": on our NF4 backend the codes and scales are buffers, so
    it is the bytes of the model's distinct tensors for every kind of checkpoint."""
    from showcase import MODELS, load_model, model_facts
    from support.metrics import human_bytes

    shown = [m.value for m in run_app(project, monkeypatch).tabs[0].metric
             if m.label == "In memory"]
    counted = []
    for spec in MODELS:  # plain, classifier, LoRA classifier, NF4 + LoRA
        path = project / spec.default
        model, tokenizer, meta = load_model(spec.key, path, project / "model_weights.pth", "cpu")
        tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        expected = sum(t.numel() * t.element_size() for t in tensors.values())
        facts = model_facts(model, tokenizer, meta, path)
        assert facts["memory_bytes"] == expected, spec.key
        assert ("quantized" in facts) == (spec.key == "qlora")
        counted.append(human_bytes(expected))
    assert shown == counted


@needs_data
def test_generation_shows_what_generation_py_generates(project, monkeypatch):
    from checkpoint import load_checkpoint
    from generation import generate_text

    at = run_app(project, monkeypatch)
    at.text_area(key="gen_prompt").input("KING:")
    at.slider(key="gen_max").set_value(30)
    at.number_input(key="gen_seed").set_value(7)
    at.button(key="gen_go").click().run(timeout=60)
    no_trouble(at)
    model, tokenizer, _ = load_checkpoint(project / "model_weights.pth")
    expected = generate_text(model, tokenizer, "KING:", max_new_tokens=30, temperature=0.8,
                             top_k=50, seed=7)
    assert expected
    shown = [h.proto.body for h in at.tabs[2].get("html")]
    assert shown == [f'<div style="{TEXT_STYLE}"><b>KING:</b>{html.escape(expected)}</div>']
    assert at.tabs[2].caption[-1].value.startswith("30 tokens generated in ")


@needs_data
@pytest.mark.parametrize("prompt", ["", "<|endoftext|> 🙂 ü\n\t", "x" * 2000])
def test_any_prompt_generates_without_crashing(project, monkeypatch, prompt):
    at = run_app(project, monkeypatch)
    at.text_area(key="gen_prompt").input(prompt)
    at.slider(key="gen_max").set_value(5)
    at.slider(key="gen_temp").set_value(0.0)
    at.button(key="gen_go").click().run(timeout=60)
    no_trouble(at)
    assert "tokens/s" in at.tabs[2].caption[-1].value


@needs_data
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.text(st.characters(codec=None), max_size=300) | st.text(max_size=3000),
       context=st.text(max_size=300), temperature=st.sampled_from([0.0, 0.05, 1.0, 2.0]),
       top_k=st.integers(0, 300), top_p=st.sampled_from([0.05, 0.5, 1.0]),
       max_new=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_any_input_in_any_tab_is_an_answer_or_a_message(project, monkeypatch, text, context,
                                                        temperature, top_k, top_p, max_new,
                                                        seed):
    """Hostile inputs through the real widgets: nothing may raise, every tab still answers."""
    at = run_app(project, monkeypatch)
    at.text_area(key="tok_text").input(text)
    at.text_input(key="attn_text").input(text[:300])  # the widgets' max_chars
    at.text_area(key="gen_prompt").input(text)
    at.slider(key="gen_max").set_value(max_new)
    at.slider(key="gen_temp").set_value(temperature)
    at.number_input(key="gen_top_k").set_value(top_k)
    at.slider(key="gen_top_p").set_value(top_p)
    at.number_input(key="gen_seed").set_value(seed)
    at.button(key="gen_go").click().run(timeout=60)
    no_trouble(at)
    at.text_input(key="sent_text").input(text[:500])
    at.button(key="sent_go").click().run(timeout=60)
    no_trouble(at)
    at.text_area(key="inst_text").input(text[:1000])
    at.text_area(key="inst_context").input(context)
    at.slider(key="inst_max").set_value(max_new)
    at.button(key="inst_go").click().run(timeout=60)
    no_trouble(at)


@needs_data
def test_sentiment_shows_both_classifiers_probabilities(project, monkeypatch):
    from classifier import load_classifier, predict

    at = run_app(project, monkeypatch)
    text = "A dull, lifeless and overlong film."
    at.text_input(key="sent_text").input(text)
    at.button(key="sent_go").click().run(timeout=60)
    no_trouble(at)
    tab = at.tabs[3]
    assert "a dull , lifeless and overlong film ." in tab.caption[0].value
    assert "knows no movie-review English" in tab.caption[-1].value
    (table,) = tab.dataframe  # the dev accuracies, the bag-of-words baseline beside the models
    models = list(table.value["model"])
    assert models[:3] == ["majority class", "TF-IDF 1-2gram + logistic regression",
                          "full finetune (pretrained)"]
    assert models[3].startswith("LoRA r=") and len(models) == 4
    charts = tab.get("vega_lite_chart")
    assert len(charts) == 2
    for name, chart, metric in zip(["classifier.pth", "lora_classifier.pth"], charts, tab.metric,
                                   strict=True):
        model, tokenizer, _ = load_classifier(project / name, base=project / "model_weights.pth")
        label, probs = predict(model, tokenizer, text)
        assert metric.value == label
        shown = {row["label"]: row["probability"] for row in chart_data(chart)}
        assert shown == pytest.approx(probs)


@needs_data
def test_empty_inputs_get_one_sentence(project, monkeypatch):
    from showcase import EMPTY_INSTRUCTION, EMPTY_SENTENCE

    at = run_app(project, monkeypatch)
    at.text_input(key="sent_text").input("   ")
    at.button(key="sent_go").click().run(timeout=60)
    no_trouble(at)
    assert [i.value for i in at.tabs[3].info] == [EMPTY_SENTENCE]
    assert not at.tabs[3].metric  # nothing classified
    at.text_area(key="inst_text").input(" \n ")
    at.button(key="inst_go").click().run(timeout=60)
    no_trouble(at)
    assert EMPTY_INSTRUCTION in [i.value for i in at.tabs[4].info]
    assert not at.tabs[4].get("html")  # nothing answered


@needs_data
def test_the_held_out_table_puts_the_answers_where_a_1400_px_window_shows_them(project,
                                                                              monkeypatch):
    at = run_app(project, monkeypatch)
    (table,) = at.tabs[4].dataframe
    config = json.loads(table.proto.columns)
    assert list(table.proto.column_order)[:3] == ["instruction", "tuned_answer", "base_answer"]
    widths = {name: column.get("width") for name, column in config.items()}
    assert all(widths.get(name) for name in table.proto.column_order), widths
    assert sum(widths[name] for name in table.proto.column_order) <= 900
    # Accuracies: one decimal everywhere, as the charts' 71.9%.
    (accuracy,) = at.tabs[3].dataframe
    assert json.loads(accuracy.proto.columns)["accuracy"]["type_config"]["format"] == "%.1f%%"


def test_overview_cards_are_two_a_row_so_script_names_fit(tmp_path, monkeypatch):
    at = run_app(tmp_path, monkeypatch)
    rows = [block for block in at.tabs[0].children.values() if block.type != "markdown"]
    assert len(rows) == 2 and all(len(row.children) == 2 for row in rows)
    assert len(at.tabs[0].columns) == 4


@needs_data
def test_instruction_model_answers_and_shows_its_template(project, monkeypatch):
    from instructions import answer, format_prompt, load_instruction_model

    at = run_app(project, monkeypatch)
    at.text_area(key="inst_text").input("Name a colour.")
    at.text_area(key="inst_context").input("Colours: red, blue.")
    at.slider(key="inst_max").set_value(12)
    at.button(key="inst_go").click().run(timeout=60)
    no_trouble(at)
    tab = at.tabs[4]
    assert tab.code[0].value == format_prompt("Name a colour.", "Colours: red, blue.").strip()
    model, tokenizer, _ = load_instruction_model(project / "qlora_adapters.pth",
                                                 base=project / "model_weights.pth")
    expected = answer(model, tokenizer, "Name a colour.", "Colours: red, blue.",
                      max_new_tokens=12, temperature=0.7, seed=1337)
    (shown,) = [h.proto.body for h in tab.get("html")]
    assert html.escape(expected) in shown
    # Tokens generated, not the answer re-encoded: at most the maximum asked for.
    n = int(tab.caption[-1].value.split(" token")[0])
    assert 1 <= n <= 12 and "tokens/s" in tab.caption[-1].value
    assert tab.expander[1].label.startswith("Held-out answers from training")
    assert "Expect poor answers" in tab.info[0].value
    from showcase import readme_section
    assert tab.expander[2].label.startswith("Why the answers are poor")
    assert tab.expander[2].markdown[0].value == readme_section(
        "Instruction tuning, and why the answers are poor") != ""


def test_the_token_count_counts_forward_passes_not_reencoded_text():
    """Bytes that are no character decode to U+FFFD, which re-encodes as 3 bytes: the count
    must be the model's passes, one per generated token, and only this thread's."""
    import threading

    import torch

    from model import GPTConfig, GPTModel
    from showcase import counting_forward_passes

    model = GPTModel(GPTConfig(vocab_size=300, context_length=8, n_layer=1, n_head=1, n_embd=8))
    x = torch.zeros(1, 1, dtype=torch.long)
    with counting_forward_passes(model) as count:
        for _ in range(5):
            model(x)
        other = threading.Thread(target=model, args=(x,))  # another visitor, same model
        other.start()
        other.join()
    model(x)  # after the block: not counted, the hook is gone
    assert count == [5] and not model._forward_hooks


def test_streaming_redraws_at_most_every_interval_and_shows_the_whole_text():
    """The app's stream (showcase.stream_to) gives exactly generate_text's text and token
    count; it redraws per piece only when asked to, and always shows the final text, also
    when generation fails half-way."""
    from generation import generate_text, stream_text
    from model import GPTConfig, GPTModel
    from showcase import stream_to
    from tokenizer import BPETokenizer

    tokenizer = BPETokenizer()
    tokenizer.train("To be, or not to be, that is the question. " * 30, 300)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=1,
                               n_embd=16)).eval()
    settings = dict(max_new_tokens=40, temperature=0.9, seed=3, stop_at_eot=False)
    expected = generate_text(model, tokenizer, "To be", **settings)
    for interval, most in [(float("inf"), 1), (0.0, 40)]:
        shown = []
        text, tokens = stream_to(stream_text(model, tokenizer, "To be", **settings), model,
                                 shown.append, interval)
        assert text == expected and shown[-1] == expected and tokens == 40
        assert 1 <= len(shown) <= most and shown == sorted(shown, key=len)
    assert len(shown) > 1  # interval 0: every piece is drawn

    def failing():
        yield "half an "
        yield "answer"
        raise ValueError("the model broke")

    shown = []
    with pytest.raises(ValueError, match="the model broke"):
        stream_to(failing(), model, shown.append, float("inf"))
    assert shown == ["half an answer"]


@needs_data
def test_tokenizer_view_colours_every_token(project, monkeypatch):
    from checkpoint import load_checkpoint

    at = run_app(project, monkeypatch)
    text = "Hello, world! 🙂"
    at.text_area(key="tok_text").input(text).run(timeout=60)
    no_trouble(at)
    _, tokenizer, _ = load_checkpoint(project / "model_weights.pth")
    ids = tokenizer.encode(text)
    tab = at.tabs[1]
    assert [m.value for m in tab.metric] == [str(len(ids)), str(len(text)),
                                             f"{len(text) / len(ids):.2f}"]
    (boxes,) = [h.proto.body for h in tab.get("html")]
    assert boxes.count("<span") == len(ids)
    assert tab.code[0].value == str(ids)
    assert f'title="id {ids[0]}, bytes {tokenizer.token_bytes(ids[0]).hex(" ")}"' in boxes


def test_a_token_that_holds_part_of_a_character_shows_its_bytes():
    from showcase import holds_part_of_a_character, tokens_html

    boxes = tokens_html([(7, b"na\xc3"), (8, b"\xafve")])  # "naïve" cut inside the ï
    assert ">na\\xc3<" in boxes and ">\\xafve<" in boxes and "\ufffd" not in boxes
    assert 'title="id 7, bytes 6e 61 c3"' in boxes
    assert holds_part_of_a_character(b"na\xc3") and not holds_part_of_a_character("ï".encode())


@needs_data
def test_the_tokenizer_tab_says_why_a_token_shows_bytes(project, monkeypatch):
    at = run_app(project, monkeypatch)
    at.text_area(key="tok_text").input("naïve café 🙂").run(timeout=60)
    no_trouble(at)
    tab = at.tabs[1]
    (boxes,) = [h.proto.body for h in tab.get("html")]
    assert "\ufffd" not in boxes
    if "\\x" in boxes:  # this tiny vocabulary splits some of these characters
        assert "A token holds bytes, not characters" in tab.caption[-1].value


@needs_data
def test_attention_heatmap_for_every_layer_and_head(project, monkeypatch):
    at = run_app(project, monkeypatch)
    at.text_input(key="attn_text").input("to be or not")
    at.selectbox(key="attn_layer").set_value(1)
    at.selectbox(key="attn_head").set_value(1).run(timeout=60)
    no_trouble(at)
    (chart,) = at.tabs[5].get("vega_lite_chart")
    assert json.loads(chart.proto.spec)["title"] == "Layer 1, head 1"
    rows = chart_data(chart)
    n = int(len(rows) ** 0.5 * 2 ** 0.5)  # n(n+1)/2 cells: the causal lower triangle
    assert len(rows) == n * (n + 1) // 2
    for query in {row["query"] for row in rows}:  # each token's attention sums to 1
        assert sum(r["weight"] for r in rows if r["query"] == query) == pytest.approx(1, abs=1e-5)


@needs_data
def test_metrics_tab_charts_every_run(project, monkeypatch):
    at = run_app(project, monkeypatch)
    no_trouble(at)
    tab = at.tabs[6]
    assert not tab.info and not tab.warning
    titles = chart_titles(tab)
    for title in ["runs/pretrain", "runs/classifier", "runs/lora-classifier",
                  "runs/qlora-instruct", "Perplexity per token",
                  "Nats per character (bits: / ln 2)", "Dev accuracy",
                  "Trainable parameters (log scale)", "Training wall time (s)",
                  # the tiny preset's sizes (classifier, LoRA classifier, QLoRA), not 0.94 M
                  "This project's runs (38.9 K to 47.0 K parameters)",
                  "GPT-2 124 M, batch 8 x 128 (meta device, nothing allocated)",
                  "Quantized weights (KB)"]:
        assert title in titles
    saving = float(tab.metric[0].value.rstrip("%"))
    assert 80 < saving < 90  # 4-bit codes + 8-bit scales per 64 weights vs 32 bits
    # The memory by kind: stacked bars per method, the lesson, and what the numbers show.
    charts = {json.loads(c.proto.spec).get("title"): c for c in tab.get("vega_lite_chart")}
    runs_chart = charts["This project's runs (38.9 K to 47.0 K parameters)"]
    assert {row["kind"] for row in chart_data(runs_chart)} == {
        "weights", "gradients", "optimizer state", "activations (saved for backward)"}
    assert json.loads(runs_chart.proto.spec)["encoding"]["x"]["stack"] == "zero"
    captions = [c.value for c in tab.caption]
    assert any(c.startswith("Weights: QLoRA r=8") and " < LoRA r=" in c for c in captions)
    assert any(c.startswith("The totals order as the methods imply: full finetune (AdamW)")
               for c in captions)  # the 124 M projection
    assert "What it teaches: full finetuning pays" in tab.markdown[-1].value \
        or any("What it teaches" in m.value for m in tab.markdown)
    # The costs table prints numbers as the charts do (941,058) and says what its peak is.
    (costs,) = [d for d in tab.dataframe if "trainable_share" in d.value.columns]
    config = json.loads(costs.proto.columns)
    assert config["trainable"]["type_config"]["format"] == "localized"
    assert set(costs.value["peak_mem_source"]) == {"process peak RSS growth"}


def summary(*rows: dict, **extra) -> dict:
    return {"rows": list(rows), **extra}


def test_metrics_show_each_result_once_and_tell_runs_of_one_model_apart():
    from showcase import Runs, accuracy_frame, methods_frame

    majority = {"model": "majority class", "dev_acc": 0.51, "trainable": 0}
    tfidf = {"model": "TF-IDF", "dev_acc": 0.79, "trainable": 9, "train_time_s": 2.1}
    full = {"model": "full finetune", "dev_acc": 0.70, "trainable": 9, "total": 9,
            "train_time_s": 50.0}
    lora = {"model": "LoRA r=2", "dev_acc": 0.61, "trainable": 1, "total": 9}
    runs = Runs(summaries={
        "classifier": summary(majority, tfidf, full),
        # The same baselines (another wall time) and a copy of classifier's row: shown once.
        "lora-classifier": summary(majority, {**tfidf, "train_time_s": 2.4}, lora,
                                   {**full, "model": "full finetune [classifier]"}),
        # More data: other baselines and another full finetune, which must not vanish.
        "classifier-all": summary({**majority, "dev_acc": 0.55}, {**tfidf, "dev_acc": 0.82},
                                  {**full, "dev_acc": 0.75}),
    })
    accuracy = accuracy_frame(runs)
    assert dict(zip(accuracy["model"], accuracy["accuracy"], strict=True)) == {
        "majority class [classifier]": 0.51, "TF-IDF [classifier]": 0.79,
        "full finetune [classifier]": 0.70, "LoRA r=2": 0.61,
        "majority class [classifier-all]": 0.55, "TF-IDF [classifier-all]": 0.82,
        "full finetune [classifier-all]": 0.75}
    assert list(methods_frame(runs)["model"]) == ["full finetune [classifier]", "LoRA r=2",
                                                  "full finetune [classifier-all]"]
    alone = Runs(summaries={"lora-classifier": runs.summaries["lora-classifier"]})
    assert list(accuracy_frame(alone)["model"]) == ["majority class", "TF-IDF", "LoRA r=2",
                                                    "full finetune"]  # its copy, unlabelled


def test_the_runs_memory_chart_names_the_sizes_the_runs_trained():
    from showcase import Runs, methods_frame, runs_memory_title

    def title(*totals: int) -> str:
        rows = [{"model": f"m{n}", "trainable": 1, "total": n} for n in totals]
        return runs_memory_title(methods_frame(Runs(summaries={"c": summary(*rows)})))

    assert title(941_058) == "This project's runs (941.1 K parameters)"
    assert title(47_040, 38_850, 39_618) == "This project's runs (38.9 K to 47.0 K parameters)"
    assert title(124_439_808) == "This project's runs (124.44 M parameters)"  # a GPT-2 base
    assert title() == "This project's runs"


def test_malformed_memory_is_skipped_and_named():
    from showcase import Runs, memory_frame

    good = {"weights": 4, "grads": 4, "optimizer": 8, "activations": 20, "batch": [2, 3]}
    runs = Runs(summaries={"c": summary(
        {"model": "full", "trainable": 1, "total": 1, "memory": good},
        {"model": "odd", "trainable": 1, "total": 1, "memory": {**good, "grads": "4"}},
        {"model": "none", "trainable": 1, "total": 1, "memory": [1, 2]})})
    frame = memory_frame(runs)
    assert set(frame["model"]) == {"full"} and list(frame["total"]) == [36] * 4
    assert list(frame["batch"]) == ["2 x 3"] * 4
    assert [p.split(": row ")[1][:6] for p in runs.problems] == ["'odd' ", "'none'"]


def test_malformed_metrics_are_skipped_and_named():
    from showcase import Runs, methods_frame, nf4_frame

    good = {"model": "LoRA", "trainable": 1, "total": 9, "peak_mem_mb": 20.0}
    runs = Runs(summaries={
        "q": {"quantized_bytes": {"fp32": 100, "nf4": 14, "nf4_dq": 13}},
        "a": {"quantized_bytes": {"fp32": 100, "nf4": 20}},
        "b": {"quantized_bytes": {"fp32": "100", "nf4": 14, "nf4_dq": 13}},
        "c": summary(good, {"model": "full", "trainable": 9, "total": "9"},
                     {"model": "odd", "trainable": 9, "total": 9, "train_time_s": "1 min"},
                     # what the peak measured is words: a dict would fail Arrow in st.dataframe
                     {**good, "model": "source", "peak_mem_source": {"x": 1}}),
    })
    assert list(nf4_frame(runs)["run"].unique()) == ["q"]
    assert list(methods_frame(runs)["model"]) == ["LoRA"]
    assert [p.split(":")[0] for p in runs.problems] == [
        "runs/a/metrics.json", "runs/b/metrics.json", "runs/c/metrics.json",
        "runs/c/metrics.json", "runs/c/metrics.json"]
    assert all(p.endswith("(skipped).") for p in runs.problems)


# ---------------------------------------------------------------------------- robustness


@needs_data
def test_a_broken_checkpoint_disables_only_its_own_section(project, tmp_path, monkeypatch):
    for name in ("model_weights.pth", "lora_classifier.pth"):
        shutil.copy(project / name, tmp_path / name)
    (tmp_path / "classifier.pth").write_bytes(b"not a checkpoint")
    at = run_app(tmp_path, monkeypatch)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and all("classifier.pth is corrupted or not a checkpoint" in e for e in errors)
    assert len(at.tabs[3].metric) == 1  # the LoRA classifier still answers
    assert "python finetune_qlora_instructions.py" in at.tabs[4].code[0].value
    at.button(key="gen_go").click().run(timeout=60)
    assert "tokens/s" in at.tabs[2].caption[-1].value


@needs_data
def test_adapters_on_the_wrong_base_say_so(project, tmp_path, monkeypatch):
    import torch

    from checkpoint import load_checkpoint, save_checkpoint

    model, tokenizer, meta = load_checkpoint(project / "model_weights.pth")
    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    save_checkpoint(tmp_path / "model_weights.pth", model, tokenizer, **meta)
    shutil.copy(project / "qlora_adapters.pth", tmp_path / "qlora_adapters.pth")
    at = run_app(tmp_path, monkeypatch)
    assert not at.exception
    (error,) = at.tabs[4].error
    assert "trained on a different base model" in error.value


@needs_data
def test_a_retrained_checkpoint_is_loaded_again(project, tmp_path, monkeypatch):
    from checkpoint import load_checkpoint, save_checkpoint
    from model import GPTConfig, GPTModel

    shutil.copy(project / "model_weights.pth", tmp_path / "model_weights.pth")
    at = run_app(tmp_path, monkeypatch)
    before = at.tabs[0].metric[0].value
    _, tokenizer, _ = load_checkpoint(tmp_path / "model_weights.pth")
    bigger = GPTModel(GPTConfig(vocab_size=384, context_length=96, n_layer=3, n_head=2,
                                n_embd=32))
    save_checkpoint(tmp_path / "model_weights.pth", bigger, tokenizer)
    at.run(timeout=60)
    assert not at.exception
    assert at.tabs[0].metric[0].value != before


def test_charts_speak_words_not_field_names():
    """Axis titles are words, a log axis ticks powers of ten (no 0), train and val differ."""
    import pandas as pd

    from showcase import Runs, bar_chart, evaluation_frame, loss_chart

    methods = pd.DataFrame({"model": ["full", "LoRA"], "train_time_s": [57.0, 54.0],
                            "trainable": [941058, 6402]})
    for field, title in [("train_time_s", "training wall time (s)"),
                         ("trainable", "trainable parameters")]:
        (bars, _) = bar_chart(methods, field, "model", "t", log=field == "trainable"
                              ).to_dict()["layer"]
        assert bars["encoding"]["x"]["title"] == title
    log_axis = bar_chart(methods, "trainable", "model", "t", log=True).to_dict()
    values = log_axis["layer"][0]["encoding"]["x"]["axis"]["values"]
    assert values == [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
    curve = loss_chart(pd.DataFrame({"step": [1, 1], "split": ["train", "val"],
                                     "loss": [2.0, 2.1]}), "runs/x").to_dict()
    colours = curve["encoding"]["color"]["scale"]
    assert colours["domain"] == ["train", "val"] and len(set(colours["range"])) == 2
    assert curve["encoding"]["y"]["title"] == "loss (cross-entropy)"
    scores = {"perplexity": 47.3, "bits_per_char": 2.42}
    runs = Runs(summaries={"evaluate": {"checkpoint": "out/model_weights.pth", "model": scores,
                                        "unigram": scores, "untrained": scores}})
    assert list(evaluation_frame(runs)["model"]) == [
        "trained: model_weights.pth", "unigram of the training tokens", "untrained (random)"]
