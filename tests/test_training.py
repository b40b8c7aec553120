"""The training loop: schedule, optimizer groups, loss falls, exact resume, clean stop."""

import json
import os
import signal

import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from data_utils import create_dataloader
from model import GPTConfig, GPTModel
from support.runtime import Bookkeeping, pick_device, pick_dtype
from training import (
    TrainConfig,
    configure_optimizer,
    evaluate_loss,
    lm_loss,
    lr_at,
    train_model,
)

CPU = torch.device("cpu")
CFG = GPTConfig(vocab_size=32, context_length=16, n_layer=2, n_head=2, n_embd=32)


def tiny_data(n: int = 2000) -> list[int]:
    """A learnable stream: a repeating pattern with a little noise."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.arange(n) % 7 + (torch.arange(n) // 7) % 3
    noise = torch.randint(0, 32, (n,), generator=g) * (torch.rand(n, generator=g) < 0.05)
    return (pattern + noise).clamp(max=31).tolist()


def loaders(batch_size: int = 8):
    ids = tiny_data()
    train = create_dataloader(ids[:1600], 16, batch_size, shuffle=True, seed=0)
    val = create_dataloader(ids[1600:], 16, batch_size, shuffle=False, drop_last=False)
    return train, val


def fresh_model(dropout: float = 0.0) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(**{**CFG.to_dict(), "dropout": dropout}))


def test_learning_rate_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(max_steps=100, learning_rate=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == pytest.approx(1e-4)


def test_weight_decay_only_on_matrices():
    model = fresh_model()
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), CPU)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_muon_gives_linear_matrices_to_muon_and_the_rest_to_adamw():
    model = fresh_model()
    opt = configure_optimizer(model, TrainConfig(optimizer="muon", learning_rate=3e-3,
                                                 muon_lr=0.02), CPU)
    decay, no_decay, muon = opt.param_groups
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear)
              and m.weight is not model.tok_emb.weight]
    assert [id(p) for p in muon["params"]] == [id(p) for p in linear]
    assert muon["muon"] and muon["lr_scale"] == pytest.approx(0.02 / 3e-3)
    assert any(p is model.tok_emb.weight for p in decay["params"])  # the tied head: AdamW
    assert not decay["muon"] and not no_decay["muon"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="Unknown optimizer 'sgd'; use adamw or muon"):
        configure_optimizer(model, TrainConfig(optimizer="sgd"), CPU)


@pytest.mark.parametrize("field, value, message", [
    ("eval_interval", 0, "eval_interval must be an integer >= 1, got 0"),
    ("grad_accum_steps", 0, "grad_accum_steps must be an integer >= 1"),
    ("max_steps", -1, "max_steps must be an integer >= 1"),
    ("learning_rate", 0.0, "learning_rate must be positive"),
    ("weight_decay", -0.1, "weight_decay must be >= 0"),
])
def test_bad_train_config_is_one_sentence_up_front(field, value, message):
    # Left to the loop, these were a ZeroDivisionError mid-run or a run that saw no batch.
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls_and_metrics_are_logged(tmp_path, optimizer):
    train, val = loaders()
    model = fresh_model()
    before = sum(lm_loss(model, b).item() for b in val) / len(val)
    log = tmp_path / "metrics.jsonl"
    summary = train_model(model, train, val, TrainConfig(max_steps=60, learning_rate=3e-3,
                          warmup_steps=5, eval_interval=20, log_interval=10,
                          optimizer=optimizer), CPU,
                          bookkeeping=Bookkeeping(log_path=log, tokens_per_batch=8 * 16))
    assert summary["val_loss"] < before - 1.0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert {"step", "train_loss", "lr", "elapsed", "tokens_per_sec"} <= set(records[0])
    assert "val_loss" in records[1]


def test_float16_trains_with_a_gradient_scaler():
    """float16 gradients underflow without loss scaling: the loop scales, and the loss falls."""
    train, val = loaders()
    model = fresh_model()
    before = evaluate_loss(model, val, lm_loss, CPU)
    saved = {}
    cfg = TrainConfig(max_steps=30, learning_rate=3e-3, warmup_steps=5, eval_interval=1000,
                      optimizer="adamw", dtype="float16")  # emulated on a CPU: 10x slower
    summary = train_model(model, train, val, cfg, CPU,
                          bookkeeping=Bookkeeping(save_fn=saved.update))
    assert summary["dtype"] == "float16"
    assert summary["val_loss"] < before - 1.0
    # The scaler's state is saved for an exact resume; bf16 and fp32 runs have none.
    assert saved["scaler"]["scale"] > 1 and saved["scaler"]["_growth_tracker"] >= 0


def test_best_fn_receives_the_weights_with_the_lowest_val_loss(tmp_path):
    train, val = loaders()
    log = tmp_path / "metrics.jsonl"
    bests = []  # (step, weights) at each new lowest val loss
    cfg = TrainConfig(max_steps=80, learning_rate=1e-2, warmup_steps=5, eval_interval=10,
                      dtype="float32")  # the val losses are compared with a float32 evaluation
    keep = Bookkeeping(log_path=log, best_fn=lambda s: bests.append(
        (s["step"], {k: v.clone() for k, v in s["model"].items()})))
    summary = train_model(fresh_model(), train, val, cfg, CPU, bookkeeping=keep)
    vals = {r["step"]: r["val_loss"] for r in map(json.loads, log.read_text().splitlines())
            if "val_loss" in r}
    record_steps = [step for step in vals if vals[step] == min(v for s, v in vals.items()
                                                               if s <= step)]
    assert [step for step, _ in bests] == record_steps
    assert summary["best_step"] == record_steps[-1]
    assert summary["best_val_loss"] == min(vals.values())
    best = fresh_model()
    best.load_state_dict(bests[-1][1])
    assert evaluate_loss(best, val, lm_loss, CPU, torch.float32, cfg.eval_batches) == pytest.approx(
        min(vals.values()), rel=1e-6)


def test_val_loss_is_the_mean_over_every_window_even_with_a_short_last_batch():
    ids = tiny_data()[1600:]
    model = fresh_model()
    everything = next(iter(create_dataloader(ids, 16, 1000, shuffle=False, drop_last=False)))
    in_fives = create_dataloader(ids, 16, 5, shuffle=False, drop_last=False)
    assert len(everything[0]) % 5 != 0  # so the last batch of five is short
    with torch.no_grad():
        expected = lm_loss(model.eval(), everything).item()
    assert evaluate_loss(model, in_fives, lm_loss, CPU) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resumed_run_matches_an_uninterrupted_one(optimizer):
    """Ctrl-C at step 15, resume to 30: the same weights as 30 steps in one go (dropout on)."""
    cfg = TrainConfig(max_steps=30, learning_rate=3e-3, warmup_steps=5, eval_interval=1000,
                      optimizer=optimizer, dtype="float32")  # assert_close's float32 tolerance
    train, _ = loaders()
    straight = fresh_model(dropout=0.1)
    train_model(straight, train, None, cfg, CPU)

    calls = {"n": 0}

    def interrupt_at_15(model, batch):
        calls["n"] += 1
        if calls["n"] == 15:
            os.kill(os.getpid(), signal.SIGINT)  # like Ctrl-C: the loop saves and returns
        return lm_loss(model, batch)

    state = {}
    summary = train_model(fresh_model(dropout=0.1), train, None, cfg, CPU,
                          loss_fn=interrupt_at_15, bookkeeping=Bookkeeping(save_fn=state.update))
    assert summary["interrupted"] and state["step"] == 15

    torch.manual_seed(999)  # the resumed run must restore the RNG (dropout) state itself
    resumed = fresh_model(dropout=0.1)
    train_model(resumed, train, None, cfg, CPU, resume_state=state)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_a_state_that_does_not_fit_the_run_is_one_sentence():
    cfg = TrainConfig(max_steps=2, learning_rate=1e-3, warmup_steps=0, eval_interval=1000,
                      dtype="float32")
    train, _ = loaders()
    state = {}
    train_model(fresh_model(), train, None, cfg, CPU, bookkeeping=Bookkeeping(save_fn=state.update))
    moments = state["optimizer"]["state"][0]
    moments["exp_avg"] = torch.zeros(3)  # a moment of another shape: it failed mid-step
    with pytest.raises(ValueError, match=r"^The state to resume from \(--resume\) does not fit "
                       r"this run \(its optimizer entry exp_avg has shape \(3,\), the parameter "
                       r"\(\d+, \d+\)\); start a run without --resume\.$") as err:
        train_model(fresh_model(), train, None, cfg, CPU, resume_state=state)
    assert err.value.__suppress_context__


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_gradients_are_clipped_before_every_optimizer_step(optimizer):
    """The total gradient norm the optimizer sees never exceeds grad_clip."""
    norms = []

    def record_norm(opt, args, kwargs):  # runs just before each opt.step()
        grads = [p.grad for group in opt.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    clip = 1e-3  # far below the unclipped norms (~1), so every step is clipped
    cfg = TrainConfig(max_steps=5, learning_rate=1e-3, warmup_steps=1, eval_interval=1000,
                      grad_clip=clip, optimizer=optimizer, dtype="float32")
    train, _ = loaders()
    hook = register_optimizer_step_pre_hook(record_norm)
    try:
        train_model(fresh_model(), train, None, cfg, CPU)
    finally:
        hook.remove()
    assert len(norms) == 5
    assert all(norm <= clip * (1 + 1e-4) for norm in norms), norms


def test_gradient_accumulation_matches_a_bigger_batch():
    ids = tiny_data()
    big = create_dataloader(ids, 16, 8, shuffle=False)
    small = create_dataloader(ids, 16, 4, shuffle=False)
    cfg = dict(max_steps=5, learning_rate=1e-3, warmup_steps=1, eval_interval=1000, grad_clip=0,
               dtype="float32")  # the tolerance is float32's
    a, b = fresh_model(), fresh_model()
    train_model(a, big, None, TrainConfig(**cfg), CPU)
    train_model(b, small, None, TrainConfig(**cfg, grad_accum_steps=2), CPU)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_bad_device_and_dtype_get_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    for unsupported in ("tpu9", "xpu", "meta"):  # real torch devices, never run here
        with pytest.raises(ValueError, match="Unknown device"):
            pick_device(unsupported)
    with pytest.raises(ValueError, match="Unknown dtype"):
        pick_dtype("float8", CPU)
    assert pick_dtype("bfloat16", CPU) == torch.bfloat16
    assert pick_dtype("auto", CPU) == torch.float32  # bf16 on a CPU only when asked for
