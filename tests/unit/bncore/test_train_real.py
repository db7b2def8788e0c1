"""The trainer on the new pieces: the Inception net (every norm, sigmoid too) and the paper's
MLP on real Fashion-MNIST (where Debian's package is installed; always in CI)."""

import os

import pytest
import torch

import bncore.functional as bnf
from bncore import events
from bncore.data import FASHION_MNIST_PACKAGE, FASHION_MNIST_SYSTEM_DIR
from bncore.spec import JobSpec
from bncore.train import train

BN_SUMMARY_KEYS = {"test_acc_batch_stats", "test_acc_running", "test_acc_population"}


@pytest.fixture(autouse=True)
def _fast_cpu(tmp_path, monkeypatch):
    threads, backend = torch.get_num_threads(), bnf.get_backend()
    torch.set_num_threads(1)
    bnf.set_backend("eager")
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path / "cache"))
    yield
    torch.set_num_threads(threads)
    bnf.set_backend(backend)


def _run(spec: JobSpec, data_dir=None) -> list[dict]:
    stream = list(train(spec, data_dir))
    for event in stream:
        assert events.decode(events.encode(event)) == event
    return stream


@pytest.mark.parametrize("norm", ["none", "batchnorm", "torch_batchnorm"])
def test_inception_trains_with_every_norm_and_sigmoid(norm):
    # BN-x5-Sigmoid's shape in miniature: Inception, sigmoid everywhere, on 8×8 digits.
    spec = JobSpec(
        dataset="digits",
        model={"arch": "inception", "hidden": [8, 16, 16], "activation": "sigmoid", "norm": norm},
        optimizer={"lr": 0.5, "momentum": 0.9},
        batch_size=32,
        steps=6,
        eval_every=3,
        log_every=2,
    )
    start, *metrics, end = _run(spec)
    assert start["parameters"] == spec.parameter_count()
    assert [m["step"] for m in metrics] == [0, 2, 3, 4, 6]
    probes = [m["values"] for m in metrics if "act_p50" in m["values"]]
    assert len(probes) == 3 and all(p["act_p15"] <= p["act_p50"] <= p["act_p85"] for p in probes)
    assert end["outcome"] == "succeeded"
    assert (BN_SUMMARY_KEYS & set(end["summary"]) == BN_SUMMARY_KEYS) == (norm != "none")


REAL_FILES = FASHION_MNIST_SYSTEM_DIR.is_dir() or os.environ.get("CI") == "true"


@pytest.mark.skipif(not REAL_FILES, reason=f"{FASHION_MNIST_PACKAGE} is not installed")
def test_the_paper_mlp_learns_fashion_mnist(tmp_path):
    spec = JobSpec(
        dataset="fashion_mnist",
        model={"hidden": [100, 100, 100], "activation": "sigmoid", "norm": "batchnorm"},
        optimizer={"lr": 0.5},
        batch_size=60,
        steps=300,
        eval_every=100,
        log_every=50,
    )
    start, *metrics, end = _run(spec, data_dir=tmp_path)  # empty data dir: the package's files
    assert start["parameters"] == 784 * 100 + 2 * 100 * 100 + 3 * 2 * 100 + 100 * 10 + 10
    curve = {m["step"]: m["values"]["test_acc"] for m in metrics if "test_acc" in m["values"]}
    assert list(curve) == [0, 100, 200, 300]
    assert curve[0] < 0.3 < 0.6 < end["summary"]["best_test_acc"]  # chance is 0.1
    assert end["summary"]["test_acc_population"] > 0.6
