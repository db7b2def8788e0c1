"""Checkpoints: a training run's whole state on disk, so a retried run resumes where it was.

    DIR/step-000000500.pt   the state after step 500
    DIR/model.pt            the final model's ``state_dict`` (what GET /runs/{id}/checkpoint serves)

The folder's layout and retention are in bncore/checkpoint_files.py (no torch there: the
worker prunes by it). A checkpoint holds the model (parameters and BN buffers), the optimizer
and scheduler, the RNG states (torch's global one, CUDA's, and the shuffling generator with
its position in the epoch), the loop's own state (first loss, divergence flag, evaluations so
far) and the step.
Restoring it and training on gives the same numbers as never stopping (same machine, same
seed). Files are written atomically (a temporary file in the same folder, fsync, rename), so a
kill mid-write leaves the previous checkpoint intact.

A checkpoint is refused, with a reason, when it cannot be read (corrupt, truncated), when it
was made for another spec (its fingerprint differs), or when its state does not fit the model;
the trainer then tries the next older one, or starts from step 0.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bncore.checkpoint_files import FINAL_MODEL, prune, step_checkpoints, step_path
from bncore.spec import JobSpec

FORMAT = 1  # bumped when the payload's layout changes: older files are refused


def spec_fingerprint(spec: JobSpec) -> str:
    """What a checkpoint must match to be resumed from: the spec as canonical JSON."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResumableBatches(Iterator[torch.Tensor]):
    """The same mini-batches as ``bncore.train.batch_indices`` (a fresh permutation of ``n``
    per epoch from ``generator``, last partial batch dropped), with a position that a
    checkpoint can save and restore."""

    def __init__(
        self, n: int, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> None:
        if n < batch_size:
            raise ValueError(
                f"the training set has {n} examples, fewer than batch_size {batch_size}"
            )
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self._epoch_rng = generator.get_state()  # before this epoch's permutation
        self._order: torch.Tensor | None = None
        self._pos = 0

    def __next__(self) -> torch.Tensor:
        if self._order is None or self._pos + self.batch_size > self.n:
            self._new_epoch()
        assert self._order is not None
        batch = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return batch

    def _new_epoch(self) -> None:
        self._epoch_rng = self.generator.get_state()
        self._order = torch.randperm(self.n, generator=self.generator).to(self.device)
        self._pos = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng": self._epoch_rng, "pos": self._pos, "started": self._order is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["epoch_rng"])
        if state["started"]:
            self._new_epoch()  # the same permutation, and the generator just past it
            self._pos = int(state["pos"])


class CheckpointRefused(Exception):
    """A checkpoint that cannot be resumed from; the message says why."""


class Checkpoints:
    """One run's checkpoint folder. ``every`` steps between checkpoints (0: only the final
    one), the newest ``keep`` kept (0: all; the worker then prunes as the run's points are
    stored, see bncore/checkpoint_files.py). Without a folder, nothing is saved or loaded."""

    def __init__(self, directory: str | Path | None, spec: JobSpec, every: int, keep: int):
        self.directory = Path(directory) if directory else None
        self.every, self.keep = every, keep
        self.fingerprint = spec_fingerprint(spec)

    def due(self, step: int) -> bool:
        return self.directory is not None and self.every > 0 and step > 0 and step % self.every == 0

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write the state after ``step`` atomically, then drop all but the newest ``keep``
        (none with ``keep`` 0)."""
        if self.directory is None:
            return
        payload = {"format": FORMAT, "fingerprint": self.fingerprint, "step": step, **state}
        _atomic_save(payload, step_path(self.directory, step))
        if self.keep > 0:
            prune(self.directory, self.keep, step)

    def save_final(self, model_state: dict[str, Any]) -> None:
        if self.directory is not None:
            _atomic_save(model_state, self.directory / FINAL_MODEL)

    def resume(
        self, parts: TrainingParts, max_step: int | None = None
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """Restore ``parts`` from the newest checkpoint that can be resumed from (at most
        ``max_step``: the last step whose points are known to be stored, so resuming leaves
        no gap). Returns its payload (None: start from step 0, ``parts`` as they were) and why
        newer checkpoints were refused."""
        refused: list[str] = []
        if self.directory is None:
            return None, refused
        initial = copy.deepcopy(parts.state())
        for _, path in step_checkpoints(self.directory):
            try:
                payload = self._read(path)
                if max_step is not None and payload["step"] > max_step:
                    continue
                parts.load(payload)
                return payload, refused
            except CheckpointRefused as exc:
                refused.append(f"checkpoint {path.name} refused: {exc}")
            except Exception as exc:  # the state does not fit this model / optimizer
                refused.append(f"checkpoint {path.name} refused: {_first_line(exc)}")
                parts.load(initial)
        return None, refused

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointRefused(f"unreadable ({_first_line(exc)})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointRefused("not a bnlab checkpoint of this version")
        if payload.get("fingerprint") != self.fingerprint:
            raise CheckpointRefused("made for another spec")
        return payload


@dataclass
class TrainingParts:
    """What a checkpoint saves and restores besides the loop's own variables."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    batches: ResumableBatches
    device: torch.device

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": rng_state(self.device),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["batches"])
        restore_rng(state["rng"], self.device)


def resume_event(step: int, refused: list[str]) -> dict[str, Any]:
    """Told to the worker before the start event: the step resumed from (0: the start) and
    why checkpoints were refused (it deletes the points a lost attempt stored after ``step``
    and shows the reason in the run's status_reason)."""
    return {"event": "resume", "step": step, "reason": "; ".join(refused)[:400] or None}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
