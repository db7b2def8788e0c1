"""Mutation testing over bnlab's core modules, with the standard library only.

Each mutant is one small, plausible bug: an exact piece of text in one file replaced by another
(a guard dropped, ``<`` turned into ``<=``, a sign flipped), listed in benchmarks/mutant_list.py.
The repository's files (tracked and
untracked-but-not-ignored) are copied once to a temporary folder; each mutant is applied there
alone, the tests that should notice it run with ``PYTHONPATH`` pointed at the copy, and the
file is restored. A mutant is *killed* when its tests fail, *survived* when they pass (a gap in
the tests, or a change that does not matter), and *not applied* when its text is not found
exactly once (the code moved on: update the mutant).

    python benchmarks/mutants.py              # every mutant; prints the survivors at the end
    python benchmarks/mutants.py --list       # names, files and tests, nothing run
    python benchmarks/mutants.py --only finish-worker-guard --only retry-limit

Run it with the project's Python (the shared venv): the tests run under ``sys.executable``.
The exit status is 1 if any mutant survived or could not be applied, else 0.

Last full run (2026-12-07, 48 mutants, 2 busy shared cores, 18 min after an 8 min baseline):
44 killed, 4 survived; a test was added for each survivor and a run of those four (``--only``)
killed them all. Each mutant and the test that killed it (the first to fail; files under
tests/unit/):

    finish-worker-guard
        test_store_runs.py::test_claim_once_then_finish_by_the_owner_only
    owner-token-guard
        test_fencing.py::test_a_stale_token_changes_nothing_even_under_the_same_worker_name
    retry-limit
        test_store_runs.py::test_reap_requeues_then_fails
    reaper-boundary
        test_store_guards.py::test_a_zero_timeout_reaps_a_heartbeat_of_this_very_moment
    reap-keeps-token
        test_store_runs.py::test_a_reaped_attempts_token_writes_nothing_more (added)
    claim-from-running
        test_store_runs.py::test_claim_once_then_finish_by_the_owner_only
    heartbeat-ignores-cancel
        test_store_runs.py::test_cancel_queued_at_once_and_running_by_flag
    heartbeat-any-worker
        test_store_guards.py::test_stale_heartbeat_keeps_nothing_alive
    reap-ignores-cancel
        test_store_guards.py::test_a_cancelled_run_is_not_retried
    release-spends-attempt
        test_store_runs.py::test_release_requeues_without_spending_an_attempt
    cancel-flags-finished-runs
        test_store_guards.py::test_cancel_leaves_finished_runs_alone
    holds-claim-any-token
        test_fencing.py::test_a_stale_token_changes_nothing_even_under_the_same_worker_name
    resume-any-token
        test_fencing.py::test_a_stale_token_changes_nothing_even_under_the_same_worker_name
    resume-keeps-lost-points
        test_store_runs.py::test_resume_drops_the_lost_attempts_points_after_its_step (added)
    metrics-token-fence
        test_store_series.py::test_a_stale_token_writes_nothing
    metrics-resend-duplicates
        test_store_series.py::test_resends_change_nothing
    metrics-last-step-regresses
        test_store_guards.py::test_resent_batch_changes_nothing
    delete-after-drops-the-step
        test_store_series.py::test_delete_after_removes_a_lost_attempts_points
    delete-after-drops-chunk-at-step
        test_store_series.py::test_delete_after_keeps_the_point_a_chunk_starts_with (added)
    delete-after-keeps-last-step
        test_store_series.py::test_delete_after_removes_a_lost_attempts_points
    metrics-after-step-inclusive
        test_store_metrics.py::test_get_metrics_matches_a_reference_filter
    metrics-limit-off-by-one
        test_store_metrics.py::test_get_metrics_matches_a_reference_filter
    ingest-drops-failed-batch
        test_execute.py::test_metric_writer_keeps_points_through_a_database_outage
    ingest-fence-skipped
        test_fencing.py::test_a_stale_metric_writer_stores_nothing
    prune-ignores-stored-step
        test_checkpoint.py::test_pruning_keeps_what_the_stored_curve_can_resume_from
    prune-stored-step-exclusive
        test_checkpoint.py::test_pruning_keeps_what_the_stored_curve_can_resume_from
    prune-keeps-oldest
        test_checkpoint.py::test_a_resumed_run_gives_the_same_metrics_as_an_uninterrupted_one
    prune-keeps-one-fewer
        test_checkpoint.py::test_a_resumed_run_gives_the_same_metrics_as_an_uninterrupted_one
    half-accumulation
        test_half_precision.py::test_functional_forward_matches_float64
    eps-outside-sqrt
        test_bn_functional.py::test_matches_torch_float64
    running-var-biased
        test_bn_functional.py::test_matches_torch_float64
    running-momentum-swapped
        test_half_precision.py::test_modules_forward_backward_and_running_stats
    backward-dbeta-sign
        test_bn_functional.py::test_training_backward_of_a_large_input_matches_torch (added)
    backward-mean-term-dropped
        test_half_precision.py::test_modules_forward_backward_and_running_stats
    eval-eps-dropped
        test_bn_functional.py::test_matches_torch_float64
    single-value-batch-allowed
        test_bn_functional.py::test_single_value_per_channel_error_matches_torch
    population-var-biased
        test_bn_population.py::test_handcrafted_batches_match_the_formula
    cumulative-momentum-off-by-one
        test_bn_modules.py::test_module_matches_torch
    steps-to-target-strict
        test_compare.py::test_steps_to_target_first_step_at_or_above
    speedup-inverted
        test_compare.py::test_arm_statistics_and_ci
    loss-target-fraction
        test_compare_known_answers.py::test_fraction_targets
    censored-bound-swapped
        test_compare.py::test_censored_runs_count_as_budget_and_mark_bounds
    censored-counted-as-zero
        test_compare.py::test_censored_runs_count_as_budget_and_mark_bounds
    mann-whitney-all-tied
        test_compare.py::test_all_censored_test_is_none
    auth-any-key-matches
        test_auth.py::test_writes_with_a_wrong_key_are_403_and_write_nothing
    auth-delete-open
        test_auth.py::test_writes_without_a_key_are_401_and_write_nothing
    auth-reads-ignored
        test_auth.py::test_reads_need_a_key_with_auth_reads
    auth-bearer-case-sensitive
        test_auth.py::test_writes_with_a_valid_key_succeed
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mutant_list import MUTANTS, Mutant  # the list, beside this script

REPO = Path(__file__).resolve().parents[1]


def copy_repo(dest: Path) -> None:
    """Tracked files and untracked ones git does not ignore (the tests being written too)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        source = REPO / rel
        if not source.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def run_tests(
    copy: Path, tests: tuple[str, ...], timeout_s: float, report: list[str] | None = None
) -> tuple[str, float]:
    """'passed', 'failed', 'timeout', or 'error N' (pytest's exit status: 2-5 mean the tests
    could not run, e.g. none collected), and the seconds it took. ``report`` gets the last
    lines of pytest's output."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)
    # bncore's C++ operator off: no mutant touches its source, and torch's loader would rebuild
    # it for the copy's path in the shared cache (minutes on a busy machine; a test killed by
    # its timeout mid-build leaves a lock that every later load waits on). Python maths instead.
    env["BNCORE_NO_EXT"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    elapsed = time.monotonic() - started
    if report is not None:
        report += done.stdout.decode(errors="replace").splitlines()[-40:]
    outcome = {0: "passed", 1: "failed"}.get(done.returncode, f"error {done.returncode}")
    return outcome, elapsed


def run_mutant(copy: Path, mutant: Mutant, timeout_s: float) -> str:
    path = copy / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        return f"not applied ({original.count(mutant.old)} matches)"
    path.write_text(original.replace(mutant.old, mutant.new))
    output: list[str] = []
    try:
        outcome, elapsed = run_tests(copy, mutant.tests, timeout_s, output)
    finally:
        path.write_text(original)
    verdict = {"failed": "killed", "timeout": "killed", "passed": "SURVIVED"}.get(outcome)
    if verdict is None:  # a mutant that breaks the import kills the tests too; 4/5 do not
        verdict = "killed" if outcome == "error 2" else f"not run ({outcome})"
    # The test that caught it: pytest's short summary names it (-x: the first one to fail).
    caught = [line.split()[1] for line in output if line.startswith(("FAILED ", "ERROR "))]
    by = f" by {caught[0].split(' - ')[0]}" if verdict == "killed" and caught else ""
    return f"{verdict} ({outcome}, {elapsed:.0f} s){by}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only NAME")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
    parser.add_argument(
        "--baseline-timeout",
        type=float,
        default=3600,
        help="seconds for the unmutated run of every selected test together",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip checking the tests pass unmutated"
    )
    args = parser.parse_args(argv)

    known = {m.name for m in MUTANTS}
    unknown = sorted(set(args.only or []) - known)
    if unknown:
        parser.error(f"--only: unknown mutant(s) {', '.join(unknown)}; see --list")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:30} {m.path}\n{'':30} tests: {' '.join(m.tests)}")
        return 0

    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bnlab-mutants-") as tmp:
        copy = Path(tmp)
        copy_repo(copy)
        if not args.no_baseline:
            selections = sorted({t for m in chosen for t in m.tests})
            output: list[str] = []
            outcome, elapsed = run_tests(copy, tuple(selections), args.baseline_timeout, output)
            print(f"baseline (unmutated): {outcome} in {elapsed:.0f} s", flush=True)
            if outcome != "passed":
                print("\n".join(output))
                print("the selected tests fail without any mutant: fix that first")
                return 2
        for m in chosen:
            results[m.name] = run_mutant(copy, m, args.timeout)
            print(f"{m.name:30} {results[m.name]}", flush=True)

    killed = [n for n, r in results.items() if r.startswith("killed")]
    survived = [n for n, r in results.items() if r.startswith("SURVIVED")]
    other = [n for n in results if n not in killed and n not in survived]
    print(
        f"\n{len(killed)} killed, {len(survived)} survived, {len(other)} not run, of {len(results)}"
    )
    if survived:
        print("survivors: " + ", ".join(survived))
    if other:
        print("not run (update the mutant or its tests): " + ", ".join(other))
    return 1 if survived or other else 0


if __name__ == "__main__":
    sys.exit(main())
