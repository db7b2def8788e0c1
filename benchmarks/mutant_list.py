"""The mutants ``benchmarks/mutants.py`` applies: each an exact piece of text in one file, its
replacement (one small, plausible bug) and the tests that should notice it. A mutant whose
text no longer occurs exactly once is reported "not applied": update it here."""

from __future__ import annotations

from dataclasses import dataclass

STORE_TESTS = (
    "tests/unit/service/store/test_store_runs.py",
    "tests/unit/service/store/test_store_guards.py",
)
METRIC_TESTS = (
    "tests/unit/service/store/test_store_metrics.py",
    "tests/unit/service/store/test_store_series.py",
    "tests/unit/service/store/test_store_guards.py",
)
FENCE_TESTS = ("tests/unit/workers/test_fencing.py",)
INGEST_TESTS = ("tests/unit/workers/test_execute.py",)
CHECKPOINT_TESTS = ("tests/unit/bncore/test_checkpoint.py",)
BN_TESTS = (  # these run bncore's Python maths (the "eager" backend), where the mutants are
    "tests/unit/bncore/test_half_precision.py",
    "tests/unit/bncore/test_bn_functional.py",
    "tests/unit/bncore/test_bn_modules.py",
)
ANALYSIS_TESTS = ("tests/unit/service/analysis",)
AUTH_TESTS = (
    "tests/unit/service/api/test_auth.py",
    "tests/unit/service/api/test_auth_scopes.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    # ------------------------------------------------------------- run state machine (store)
    Mutant(
        "finish-worker-guard",
        "service/store/runs.py",
        "guard = [] if worker is None else [Run.worker == worker]",
        "guard = []",
        STORE_TESTS,
    ),
    Mutant(
        "owner-token-guard",  # finish, release and heartbeat ignore the claim token
        "service/store/runs.py",
        "    if token is not None:\n        guard.append(Run.claim_token == token)",
        "    if False:\n        guard.append(Run.claim_token == token)",
        STORE_TESTS + FENCE_TESTS,
    ),
    Mutant(
        "retry-limit",
        "service/store/runs.py",
        "elif attempt < max_attempts:",
        "elif attempt <= max_attempts:",
        STORE_TESTS,
    ),
    Mutant(
        "reaper-boundary",  # a heartbeat exactly at the cutoff is no longer stale
        "service/store/runs.py",
        "Run.heartbeat_at <= cutoff",
        "Run.heartbeat_at < cutoff",
        STORE_TESTS,
    ),
    Mutant(
        "reap-keeps-token",  # the lost attempt's token stays valid after the reaper took the run
        "service/store/runs.py",
        'extra: dict[str, Any] = {"worker": None, "claim_token": None}',
        'extra: dict[str, Any] = {"worker": None}',
        STORE_TESTS + FENCE_TESTS,
    ),
    Mutant(
        "claim-from-running",
        "service/store/runs.py",
        "        [RunStatus.queued],\n        RunStatus.running,",
        "        [RunStatus.queued, RunStatus.running],\n        RunStatus.running,",
        STORE_TESTS,
    ),
    Mutant(
        "heartbeat-ignores-cancel",
        "service/store/runs.py",
        "return row.status == RunStatus.running and mine and not row.cancel_requested",
        "return row.status == RunStatus.running and mine",
        STORE_TESTS,
    ),
    Mutant(
        "heartbeat-any-worker",  # a stale attempt's heartbeat refreshes the run
        "service/store/runs.py",
        "            Run.id == run_id, Run.status == RunStatus.running.value, "
        "*_owner_guard(worker, token)\n",
        "            Run.id == run_id, Run.status == RunStatus.running.value\n",
        STORE_TESTS,
    ),
    Mutant(
        "reap-ignores-cancel",
        "service/store/runs.py",
        "        if cancel_requested:\n",
        "        if False:\n",
        STORE_TESTS,
    ),
    Mutant(
        "release-spends-attempt",
        "service/store/runs.py",
        "        claim_token=None,\n        attempt=Run.attempt - 1,\n",
        "        claim_token=None,\n",
        STORE_TESTS,
    ),
    Mutant(
        "cancel-flags-finished-runs",
        "service/store/runs.py",
        ".where(Run.id == run_id, Run.status == RunStatus.running.value)\n"
        "        .values(cancel_requested=True)",
        ".where(Run.id == run_id)\n        .values(cancel_requested=True)",
        STORE_TESTS,
    ),
    Mutant(
        "holds-claim-any-token",
        "service/store/runs.py",
        ".where(Run.id == run_id, Run.claim_token == token)\n        .values(claim_token=token)",
        ".where(Run.id == run_id)\n        .values(claim_token=token)",
        STORE_TESTS + FENCE_TESTS,
    ),
    Mutant(
        "resume-any-token",
        "service/store/runs.py",
        ".where(Run.id == run_id, Run.status == RunStatus.running.value, Run.claim_token == token)"
        "\n        .values(resumed_step=",
        ".where(Run.id == run_id, Run.status == RunStatus.running.value)"
        "\n        .values(resumed_step=",
        STORE_TESTS + FENCE_TESTS,
    ),
    Mutant(
        "resume-keeps-lost-points",
        "service/store/runs.py",
        "    delete_metrics_after(session, run_id, step)\n    session.commit()\n    return True",
        "    session.commit()\n    return True",
        STORE_TESTS + FENCE_TESTS,
    ),
    # (Not listed: skipping create_run's look-up of an idempotency key seen before is an
    # equivalent mutant; the insert then hits the unique key and returns the earlier run.)
    # ------------------------------------------------------------- metric writes
    Mutant(
        "metrics-token-fence",  # add_metrics writes for whoever calls, token or not
        "service/store/metrics.py",
        '    if token is not None:\n        sql += " AND claim_token = %s"',
        '    if False:\n        sql += " AND claim_token = %s"',
        METRIC_TESTS,
    ),
    Mutant(
        "metrics-resend-duplicates",  # a re-sent batch is stored a second time
        "service/store/metrics.py",
        "fresh = old & ~np.isin(steps, stored)",
        "fresh = old",
        METRIC_TESTS,
    ),
    Mutant(
        "metrics-last-step-regresses",
        "service/store/metrics.py",
        "last_step IS NULL OR last_step < %s THEN %s",
        "last_step IS NULL OR last_step <> %s THEN %s",
        METRIC_TESTS,
    ),
    Mutant(
        "delete-after-drops-the-step",
        "service/store/metrics.py",
        "keep = steps <= step",
        "keep = steps < step",
        METRIC_TESTS,
    ),
    Mutant(
        "delete-after-drops-chunk-at-step",
        "service/store/metrics.py",
        "        if first_step > step:\n",
        "        if first_step >= step:\n",
        METRIC_TESTS,
    ),
    Mutant(
        "delete-after-keeps-last-step",
        "service/store/metrics.py",
        '"UPDATE runs SET last_step = %s WHERE id = %s AND last_step > %s"',
        '"UPDATE runs SET last_step = %s WHERE id = %s AND last_step < %s"',
        METRIC_TESTS,
    ),
    Mutant(
        "metrics-after-step-inclusive",
        "service/store/metric_reads.py",
        "lo = after_step + 1 if lo is None else max(lo, after_step + 1)",
        "lo = after_step if lo is None else max(lo, after_step)",
        METRIC_TESTS,
    ),
    Mutant(
        "metrics-limit-off-by-one",
        "service/store/metric_reads.py",
        "steps, values = steps[:limit], values[:limit]",
        "steps, values = steps[: limit - 1], values[: limit - 1]",
        METRIC_TESTS,
    ),
    # ------------------------------------------------------------- ingest (worker side)
    Mutant(
        "ingest-drops-failed-batch",  # a batch that failed to write is not retried
        "workers/ingest.py",
        "self._points[:0] = batch",
        "self._points[:0] = []",
        INGEST_TESTS,
    ),
    Mutant(
        "ingest-fence-skipped",  # the writer does not notice it lost the claim
        "workers/ingest.py",
        "        if not store.holds_claim(session, self.run_id, self.token):\n",
        "        if False:\n",
        FENCE_TESTS,
    ),
    # ------------------------------------------------------------- checkpoint retention
    Mutant(
        "prune-ignores-stored-step",  # issue 12: retention by the trainer's own step
        "bncore/checkpoint_files.py",
        "usable = [path for step, path in step_checkpoints(directory) if step <= stored_step]",
        "usable = [path for step, path in step_checkpoints(directory)]",
        CHECKPOINT_TESTS,
    ),
    Mutant(
        "prune-stored-step-exclusive",
        "bncore/checkpoint_files.py",
        "if step <= stored_step]",
        "if step < stored_step]",
        CHECKPOINT_TESTS,
    ),
    Mutant(
        "prune-keeps-oldest",
        "bncore/checkpoint_files.py",
        "return sorted(found, reverse=True)",
        "return sorted(found)",
        CHECKPOINT_TESTS,
    ),
    Mutant(
        "prune-keeps-one-fewer",
        "bncore/checkpoint_files.py",
        "usable[max(1, keep) :]",
        "usable[max(1, keep) - 1 :]",
        CHECKPOINT_TESTS,
    ),
    # ------------------------------------------------------------- BN math (bncore)
    Mutant(
        "half-accumulation",
        "bncore/_math.py",
        "return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype",
        "return dtype",
        BN_TESTS,
    ),
    Mutant(
        "eps-outside-sqrt",
        "bncore/_math.py",
        "invstd = torch.rsqrt(var + eps)",
        "invstd = torch.rsqrt(var) + eps",
        BN_TESTS,
    ),
    Mutant(
        "running-var-biased",
        "bncore/_math.py",
        "(var * (m / (m - 1))).to(running_var.dtype)",
        "var.to(running_var.dtype)",
        BN_TESTS,
    ),
    Mutant(
        "running-momentum-swapped",
        "bncore/_math.py",
        "torch._foreach_lerp_([running_mean, running_var], stats, momentum)",
        "torch._foreach_lerp_([running_mean, running_var], stats, 1 - momentum)",
        BN_TESTS,
    ),
    Mutant(
        "backward-dbeta-sign",
        "bncore/_math.py",
        "b = -a * mean - k * sum_dy / m",
        "b = -a * mean + k * sum_dy / m",
        BN_TESTS,
    ),
    Mutant(
        "backward-mean-term-dropped",
        "bncore/_math.py",
        "centred = dyf - per_channel(sum_dy / m, x)",
        "centred = dyf",
        BN_TESTS,
    ),
    Mutant(
        "eval-eps-dropped",
        "bncore/_math.py",
        "invstd = var.to(acc).add(eps).rsqrt_()",
        "invstd = var.to(acc).rsqrt_()",
        BN_TESTS,
    ),
    Mutant(
        "single-value-batch-allowed",
        "bncore/functional.py",
        "    if values == 1:\n",
        "    if values == 0:\n",
        BN_TESTS,
    ),
    Mutant(
        "population-var-biased",
        "bncore/nn/batchnorm.py",
        "self.sum_var += var * (m / (m - 1))",
        "self.sum_var += var",
        BN_TESTS + ("tests/unit/bncore/test_bn_population.py",),
    ),
    Mutant(
        "cumulative-momentum-off-by-one",
        "bncore/nn/batchnorm.py",
        "momentum = 1.0 / float(self.num_batches_tracked)",
        "momentum = 1.0 / (float(self.num_batches_tracked) + 1)",
        BN_TESTS,
    ),
    # ------------------------------------------------------------- compare maths (analysis)
    Mutant(
        "steps-to-target-strict",
        "service/analysis/runs.py",
        "hit = curve.values >= target if higher_is_better else curve.values <= target",
        "hit = curve.values > target if higher_is_better else curve.values < target",
        ANALYSIS_TESTS,
    ),
    Mutant(
        "speedup-inverted",
        "service/analysis/stats.py",
        "mean = np.mean(baseline) / np.mean(arm)",
        "mean = np.mean(arm) / np.mean(baseline)",
        ANALYSIS_TESTS,
    ),
    Mutant(
        "loss-target-fraction",
        "service/analysis/targets.py",
        "return base * fraction if up else base / fraction",
        "return base * fraction",
        ANALYSIS_TESTS,
    ),
    Mutant(
        "censored-bound-swapped",
        "service/analysis/compare.py",
        'bound = "upper" if censored else ("lower" if base_censored else None)',
        'bound = "lower" if censored else ("upper" if base_censored else None)',
        ANALYSIS_TESTS,
    ),
    Mutant(
        "censored-counted-as-zero",
        "service/analysis/compare.py",
        "float(h.steps_to_target if h.reached else r.budget)",
        "float(h.steps_to_target if h.reached else 0)",
        ANALYSIS_TESTS,
    ),
    Mutant(
        "mann-whitney-all-tied",
        "service/analysis/stats.py",
        "if not baseline or not arm or len(set(values)) == 1:",
        "if not baseline or not arm:",
        ANALYSIS_TESTS,
    ),
    # ------------------------------------------------------------- auth
    Mutant(
        "auth-any-key-matches",
        "service/auth.py",
        "if hmac.compare_digest(digest, key.digest) and found is None:",
        "if hmac.compare_digest(digest, key.digest) or found is None:",
        AUTH_TESTS,
    ),
    Mutant(
        "auth-delete-open",
        "service/api/deps.py",
        'WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})',
        'WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})',
        AUTH_TESTS,
    ),
    Mutant(
        "auth-reads-ignored",
        "service/api/deps.py",
        "return Scope.read if settings.auth_reads else None",
        "return None",
        AUTH_TESTS,
    ),
    Mutant(
        "auth-bearer-case-sensitive",
        "service/api/deps.py",
        'if scheme.lower() == "bearer" and value.strip():',
        'if scheme == "Bearer" and value.strip():',
        AUTH_TESTS,
    ),
]
