"""bncore.checkpoint with the real trainer loop (in-process): a run stopped mid-way and
resumed from its checkpoint yields the same metrics as one that never stopped; unusable
checkpoints are refused with a reason."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bncore.checkpoint import FINAL_MODEL, Checkpoints
from bncore.checkpoint_files import prune, step_checkpoints, step_path
from bncore.models import build_model
from bncore.spec import JobSpec
from bncore.train import train

SPEC = JobSpec.model_validate(
    {
        "name": "ckpt",
        "dataset": "digits",
        "model": {"hidden": [16, 16]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "step"},
        "steps": 90,
        "eval_every": 15,
        "batch_size": 32,
    }
)
TIMING = {"steps_per_sec"}  # wall-clock: differs between any two runs


@pytest.fixture(autouse=True)
def one_thread():
    """As the trainer runs (bncore.train.main): threads only slow these tiny models down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def metrics(events: list[dict], after: int = -1) -> dict[tuple[int, str], float | None]:
    return {
        (e["step"], key): value
        for e in events
        if e["event"] == "metrics" and e["step"] > after
        for key, value in e["values"].items()
        if key not in TIMING
    }


def same(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(
        (a[k] is None and b[k] is None) or math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9)
        for k in a
    )


def run_until(spec: JobSpec, checkpoints: Checkpoints, stop_step: int) -> list[dict]:
    """Consume events until the metrics event of ``stop_step``, then drop the generator (as
    a killed trainer would stop)."""
    seen = []
    stream = train(spec, checkpoints=checkpoints)
    for event in stream:
        seen.append(event)
        if event["event"] == "metrics" and event["step"] >= stop_step:
            break
    stream.close()
    return seen


def test_a_resumed_run_gives_the_same_metrics_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = list(train(SPEC, checkpoints=Checkpoints(tmp_path / "a", SPEC, every=20, keep=2)))

    ckpts = Checkpoints(tmp_path / "b", SPEC, every=20, keep=2)
    first = run_until(SPEC, ckpts, stop_step=50)
    assert first[0] == {"event": "resume", "step": 0, "reason": None}
    assert sorted(p.name for p in (tmp_path / "b").glob("step-*")) == [
        "step-000000020.pt",
        "step-000000040.pt",
    ]  # the newest two kept
    second = list(train(SPEC, checkpoints=ckpts))
    assert second[0] == {"event": "resume", "step": 40, "reason": None}
    assert min(step for step, _ in metrics(second)) == 41  # no step 0 evaluation again

    # What the store keeps: the first attempt's points up to 40, then the second's.
    stitched = {k: v for k, v in metrics(first).items() if k[0] <= 40} | metrics(second)
    assert same(stitched, metrics(whole))
    end_a, end_b = whole[-1], second[-1]
    assert end_b["outcome"] == end_a["outcome"] == "succeeded"
    assert same(end_a["summary"], end_b["summary"])

    # The final model, loadable into bncore.models without the trainer.
    model = build_model(SPEC.model, (64,), 10)
    model.load_state_dict(torch.load(tmp_path / "b" / FINAL_MODEL, weights_only=True))


def test_resume_stops_at_the_last_stored_step(tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, SPEC, every=20, keep=5)
    run_until(SPEC, ckpts, stop_step=65)
    # A checkpoint at 60 exists, but only the points up to 45 were stored.
    resumed = list(train(SPEC, checkpoints=ckpts, resume_max_step=45))
    assert resumed[0]["step"] == 40


@pytest.mark.parametrize("damage", ["corrupt", "foreign"])
def test_unusable_checkpoints_are_refused_with_a_reason(tmp_path: Path, damage: str) -> None:
    ckpts = Checkpoints(tmp_path, SPEC, every=20, keep=5)
    run_until(SPEC, ckpts, stop_step=45)  # checkpoints at 20 and 40
    newest = tmp_path / "step-000000040.pt"
    if damage == "corrupt":
        newest.write_bytes(newest.read_bytes()[:100])
    else:
        other = SPEC.model_copy(update={"seed": SPEC.seed + 1})
        run_until(other, Checkpoints(tmp_path / "other", other, every=40, keep=1), 41)
        (tmp_path / "other" / newest.name).replace(newest)

    events = list(train(SPEC, checkpoints=ckpts))

    reason = events[0]["reason"]
    assert events[0]["step"] == 20 and "step-000000040.pt refused" in reason
    assert ("unreadable" if damage == "corrupt" else "another spec") in reason
    assert events[-1]["outcome"] == "succeeded"


def test_pruning_keeps_what_the_stored_curve_can_resume_from(tmp_path: Path) -> None:
    """The trainer runs ahead of the store: with checkpoints at 20..80 and points stored only
    up to 45, the newest checkpoint a retry may use (40) survives however far the trainer got,
    and so does every later one; only the older usable ones beyond ``keep`` go."""
    ckpts = Checkpoints(tmp_path, SPEC, every=20, keep=0)  # keep 0: the trainer prunes nothing
    run_until(SPEC, ckpts, stop_step=85)
    assert [step for step, _ in step_checkpoints(tmp_path)] == [80, 60, 40, 20]

    assert prune(tmp_path, keep=1, stored_step=45) == [step_path(tmp_path, 20)]
    assert [step for step, _ in step_checkpoints(tmp_path)] == [80, 60, 40]
    assert list(train(SPEC, checkpoints=ckpts, resume_max_step=45))[0]["step"] == 40

    assert prune(tmp_path, keep=2, stored_step=80) == [step_path(tmp_path, 40)]
    assert prune(tmp_path, keep=2, stored_step=10) == []  # nothing stored reaches any of them


def test_a_spec_sets_its_own_checkpoint_interval(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``checkpoint_every`` in the spec wins over the worker's --checkpoint-every (the
    server's default); without it, the option applies."""
    from bncore.train import main

    for every, folder in ((30, "own"), (None, "default")):
        spec = SPEC.model_copy(update={"checkpoint_every": every})
        path = tmp_path / f"{folder}.json"
        path.write_text(spec.model_dump_json())
        out = tmp_path / folder
        argv = [str(path), "--checkpoint-dir", str(out), "--checkpoint-every", "40"]
        assert main([*argv, "--checkpoint-keep", "0"]) == 0
        steps = sorted(step for step, _ in step_checkpoints(out))
        last = SPEC.steps
        assert steps == [*range(every or 40, last, every or 40), last], (every, steps)
    capsys.readouterr()
