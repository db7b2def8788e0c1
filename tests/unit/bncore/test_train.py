"""The trainer: event stream, determinism, divergence, schedules, inference statistics, CLI,
and (slow) the paper's Fig. 1a claim on mnist1d."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from bncore import events
from bncore.models import build_model
from bncore.spec import JobSpec, ModelSpec
from bncore.train import (
    accuracy_with_batch_stats,
    batch_indices,
    evaluate,
    main,
    make_optimizer,
    population_accuracy,
    train,
)

SUMMARY_KEYS = {
    "best_test_acc",
    "best_test_acc_step",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "train_acc_full",
}
BN_SUMMARY_KEYS = {"test_acc_batch_stats", "test_acc_running", "test_acc_population"}


pytestmark = pytest.mark.usefixtures("fast_cpu")


def _spec(**overrides) -> JobSpec:
    base = {
        "dataset": "synthetic",
        "synthetic_features": 16,
        "model": {"hidden": [16, 16], "norm": "batchnorm"},
        "optimizer": {"lr": 0.5},
        "batch_size": 32,
        "steps": 30,
        "eval_every": 10,
    }
    return JobSpec.model_validate(base | overrides)


def _run(spec: JobSpec) -> list[dict]:
    out = list(train(spec))
    for event in out:
        assert events.decode(events.encode(event)) == event  # JSON-safe, no NaN
    return out


def _without_timing(stream: list[dict]) -> list[dict]:
    cleaned = []
    for e in stream:
        e = json.loads(json.dumps(e))
        e.pop("wall_time", None)
        e.get("values", {}).pop("steps_per_sec", None)
        cleaned.append(e)
    return cleaned


@pytest.mark.parametrize("norm", ["none", "torch_batchnorm", "batchnorm"])
def test_event_stream(norm):
    spec = _spec(model={"hidden": [16, 16], "norm": norm}, steps=25, log_every=5)
    stream = _run(spec)
    start, *metrics, end = stream
    assert start["event"] == "start" and start["device"] == "cpu"
    assert start["parameters"] == spec.parameter_count()
    assert start["spec"] == spec.model_dump(mode="json")
    assert [m["step"] for m in metrics] == [0, 5, 10, 15, 20, 25]
    for m in metrics:
        keys = set(m["values"])
        expected = set(events.TRAIN_KEYS) if m["step"] > 0 else set()
        if m["step"] in (0, 10, 20, 25):
            expected |= set(events.EVAL_KEYS)
        assert keys == expected, m
        if "act_p15" in keys:
            assert m["values"]["act_p15"] <= m["values"]["act_p50"] <= m["values"]["act_p85"]
    assert end["event"] == "end" and end["outcome"] == "succeeded" and end["step"] == 25
    assert end["reason"] is None and end["wall_time"] > 0
    summary = end["summary"]
    assert set(summary) == SUMMARY_KEYS | (BN_SUMMARY_KEYS if norm != "none" else set())
    evals = {m["step"]: m["values"]["test_acc"] for m in metrics if "test_acc" in m["values"]}
    assert summary["best_test_acc"] == max(evals.values())
    assert evals[summary["best_test_acc_step"]] == summary["best_test_acc"]
    assert summary["final_test_acc"] == evals[25]
    if norm != "none":
        assert summary["test_acc_running"] == summary["final_test_acc"]


def test_same_spec_same_numbers_and_seed_matters():
    spec = _spec(steps=20, eval_every=5)
    first, second = _without_timing(_run(spec)), _without_timing(_run(spec))
    assert first == second
    other = _without_timing(_run(_spec(steps=20, eval_every=5, seed=1)))
    assert other[1:] != first[1:]


def test_it_learns():
    end = _run(_spec(steps=150, eval_every=150, log_every=50))[-1]
    assert end["summary"]["best_test_acc"] > 0.3  # chance is ~0.1


def test_cnn_on_digits_with_adam():
    spec = _spec(
        dataset="digits",
        model={"arch": "cnn", "hidden": [4, 4], "norm": "batchnorm", "activation": "relu"},
        optimizer={"name": "adam", "lr": 0.01, "weight_decay": 1e-4},
        steps=10,
        eval_every=10,
    )
    end = _run(spec)[-1]
    assert end["outcome"] == "succeeded" and set(end["summary"]) == SUMMARY_KEYS | BN_SUMMARY_KEYS


@pytest.mark.parametrize("log_every, eval_every", [(1, 10), (4, 10), (50, 7)])
def test_divergence_stops_with_the_step_and_a_reason(log_every, eval_every):
    spec = _spec(
        model={"hidden": [32, 32], "norm": "none", "activation": "relu"},
        optimizer={"lr": 100.0},
        steps=200,
        log_every=log_every,
        eval_every=eval_every,
    )
    stream = _run(spec)
    end = stream[-1]
    assert end["outcome"] == "diverged"
    # The same step whatever log_every: each loss kept on the device, read at sync points.
    assert end["step"] == 3
    assert end["reason"].startswith("loss ") and end["reason"].endswith("at step 3")
    assert "exceeded 1000× its initial 2.2" in end["reason"]
    assert stream[-2]["step"] < log_every + 3  # stopped at the first log step after it
    assert set(end["summary"]) == SUMMARY_KEYS


def test_nan_loss_diverges_at_once(tmp_path):
    x = np.full((40, 5), np.nan)
    np.savez(
        tmp_path / "nan.npz",
        x_train=x,
        y_train=np.arange(40) % 2,
        x_test=x[:8],
        y_test=np.zeros(8, int),
    )
    spec = _spec(dataset="npz", data_path="nan.npz", synthetic_features=32, batch_size=8)
    stream = list(train(spec, data_dir=tmp_path))
    end = stream[-1]
    assert (end["outcome"], end["step"], end["reason"]) == (
        "diverged",
        1,
        "loss became nan at step 1",
    )
    assert stream[-2]["values"]["train_loss"] is None  # NaN travels as null
    events.encode(end)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"schedule": "constant"}, lambda s: 0.5),
        ({"schedule": "step", "step_size": 4, "gamma": 0.5}, lambda s: 0.5 * 0.5 ** ((s - 1) // 4)),
        ({"schedule": "exponential", "gamma": 0.9}, lambda s: 0.5 * 0.9 ** (s - 1)),
    ],
)
def test_lr_schedules_step_per_training_step(schedule, expected):
    stream = _run(_spec(optimizer={"lr": 0.5, **schedule}, steps=12, eval_every=12))
    lrs = {e["step"]: e["values"]["lr"] for e in stream if e["event"] == "metrics" and e["step"]}
    assert lrs == pytest.approx({s: expected(s) for s in range(1, 13)})


def test_optimizer_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(_spec(optimizer={"momentum": 0.9, "weight_decay": 0.01}).optimizer, params)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 0.01
    adam = make_optimizer(_spec(optimizer={"name": "adam", "lr": 1e-3}).optimizer, params)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 1e-3


def test_batches_are_epoch_permutations_without_the_partial_batch():
    gen = torch.Generator().manual_seed(0)
    it = batch_indices(10, 3, gen, torch.device("cpu"))
    epoch = torch.cat([next(it) for _ in range(3)])  # 3 batches of 3; the 10th example dropped
    assert len(set(epoch.tolist())) == 9
    assert all(len(next(it)) == 3 for _ in range(10))
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(batch_indices(5, 8, gen, torch.device("cpu")))


def _accuracy_with_batch_stats_by_hand(model, x, y):
    """50 examples at batch size 16: four near-equal chunks of 13, 13, 12 and 12 (never a lone
    example), each normalized by its own statistics in train mode."""
    copy_ = copy.deepcopy(model).train()
    chunks = [(0, 13), (13, 26), (26, 38), (38, 50)]
    with torch.no_grad():
        correct = sum((copy_(x[a:b]).argmax(1) == y[a:b]).sum() for a, b in chunks)
    return correct / len(y)


def _population_accuracy_by_hand(model, batches, x, y):
    """Algorithm 2 with forward pre-hooks: each BN layer's inputs over ``batches`` (the net in
    train mode, so deeper layers see batch-normalized inputs), E[x] = mean of the batch means,
    Var[x] = mean of the unbiased batch variances, written as running statistics of an eval copy."""
    train_copy = copy.deepcopy(model).train()
    layers = [block.norm for block in train_copy.blocks]
    inputs: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(args[0]))
        for layer, seen in zip(layers, inputs, strict=True)
    ]
    with torch.no_grad():
        for batch in batches:
            train_copy(batch)
    for hook in hooks:
        hook.remove()
    eval_copy = copy.deepcopy(model).eval()
    with torch.no_grad():
        for block, seen in zip(eval_copy.blocks, inputs, strict=True):
            block.norm.running_mean.copy_(torch.stack([b.mean(0) for b in seen]).mean(0))
            block.norm.running_var.copy_(torch.stack([b.var(0) for b in seen]).mean(0))
        return (eval_copy(x).argmax(1) == y).float().mean()


@pytest.mark.parametrize("norm", ["batchnorm", "torch_batchnorm"])
def test_inference_statistics_leave_the_model_alone(norm):
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=[8, 8], norm=norm), (1, 6), 3).train()
    for _ in range(3):
        model(torch.randn(16, 1, 6) * 2 + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(50, 1, 6), torch.randint(0, 3, (50,))
    batches = [torch.randn(16, 1, 6) for _ in range(5)]
    batch_acc = accuracy_with_batch_stats(model, x, y, batch_size=16)
    pop_acc = population_accuracy(model, iter(batches), x, y)
    # The same numbers computed another way, on copies (the model itself must stay as it is).
    torch.testing.assert_close(batch_acc, _accuracy_with_batch_stats_by_hand(model, x, y))
    torch.testing.assert_close(pop_acc, _population_accuracy_by_hand(model, batches, x, y))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Batch statistics over the whole set in one batch = normalizing by the set's own stats.
    model.eval()
    assert (
        accuracy_with_batch_stats(model, x, y, batch_size=50)
        == (model.train()(x).argmax(1) == y).float().mean()
    )
    model.eval()
    assert evaluate(model, x, y)[1] == (model(x).argmax(1) == y).float().mean()


def test_population_accuracy_matches_algorithm_2_by_hand():
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=[8], norm="torch_batchnorm"), (1, 6), 3).eval()
    batches = [torch.randn(16, 1, 6) * 3 for _ in range(4)]
    with torch.no_grad():
        pre = torch.cat([model.blocks[0].weights(b.flatten(1)) for b in batches]).view(4, 16, 8)
        bn = model.blocks[0].norm
        bn.running_mean.copy_(pre.mean(1).mean(0))
        bn.running_var.copy_(pre.var(1, unbiased=True).mean(0))  # m/(m-1)·E[σ²_B]
    x, y = torch.randn(200, 1, 6), torch.randint(0, 3, (200,))
    by_hand = evaluate(model, x, y)[1]
    torch.testing.assert_close(population_accuracy(model, iter(batches), x, y), by_hand)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_streams_events():
    # The one real subprocess: `python -m bncore.train -` reading the spec from stdin.
    proc = subprocess.run(
        [sys.executable, "-m", "bncore.train", "-"],
        input=_spec(steps=6, eval_every=3, log_every=2).model_dump_json(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stream = [events.decode(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in stream] == ["start"] + ["metrics"] * 5 + ["end"]
    assert [e["step"] for e in stream[1:-1]] == [0, 2, 3, 4, 6]


def test_cli_spec_file_and_errors(tmp_path, capsys):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(_spec(steps=2, eval_every=2).model_dump_json())
    assert main([str(spec_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = [events.decode(line)["event"] for line in lines]
    assert kinds == ["start"] + ["metrics"] * 3 + ["end"]  # steps 0, 1, 2

    spec_file.write_text('{"dataset": "mnist1d", "batch_size": 1}')
    assert main([str(spec_file)]) == 2
    out = capsys.readouterr()
    assert "batch_size" in out.err and out.out == ""

    assert main([str(tmp_path / "absent.json")]) == 2
    assert "invalid spec" in capsys.readouterr().err

    spec_file.write_text('{"dataset": "npz", "data_path": "../x.npz"}')
    assert main([str(spec_file), "--data-dir", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert "outside the data directory" in out.err and out.out == ""


# --- the paper's claim (Fig. 1a), scaled to mnist1d -------------------------------------------


def _steps_to(stream: list[dict], target: float) -> int | None:
    for e in stream:
        if e["event"] == "metrics" and e["values"].get("test_acc", -1) >= target:
            return e["step"]
    return None


@pytest.mark.slow
def test_bn_reaches_the_baselines_best_accuracy_in_far_fewer_steps():
    """The paper's MNIST net (3×100 sigmoid, batch 60, plain SGD, same seed and LR) on mnist1d:
    with BN it reaches the baseline's best test accuracy in a fraction of the steps."""

    def spec(norm):
        return JobSpec(
            dataset="mnist1d",
            model={"hidden": [100, 100, 100], "activation": "sigmoid", "norm": norm},
            optimizer={"name": "sgd", "lr": 1.0},
            batch_size=60,
            steps=3000,
            eval_every=100,
            log_every=100,
            seed=0,
        )

    base, bn = _run(spec("none")), _run(spec("torch_batchnorm"))
    target = base[-1]["summary"]["best_test_acc"]
    base_steps, bn_steps = _steps_to(base, target), _steps_to(bn, target)
    assert bn_steps is not None and bn_steps * 3 <= base_steps, (target, base_steps, bn_steps)
    assert bn[-1]["summary"]["best_test_acc"] > target + 0.1


def test_help_says_what_it_reads_prints_and_an_example(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps the options to the terminal's width
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for needed in ('"event": "start"', '"event": "metrics"', '"event": "end"', "exit status"):
        assert needed in text
    assert "fashion_mnist" in text and "dataset-fashion-mnist" in text
    # The example is a spec the trainer accepts.
    example = text.split("echo '", 1)[1].split("' |", 1)[0]
    assert JobSpec.model_validate_json(example).dataset == "fashion_mnist"
    assert max(len(line) for line in text.splitlines()) <= 80
