"""Transient Slurm errors are retried, permanent ones named, and no retry submits twice (no cluster).

The error texts are Slurm 22.05's (client messages of sbatch/squeue/scontrol); the fake
runners answer from scripts of (exit code, stdout, stderr).
"""

from __future__ import annotations

import inspect
import random
import subprocess

import pytest

from bayesim_hpc.executors import slurm_query as sq
from bayesim_hpc.executors import slurm_retry, slurm_sbatch
from bayesim_hpc.executors.slurm_retry import RetryPolicy, classify

SOCKET = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
NO_CTLD = "squeue: error: slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


class Script:
    """A `run` answering each program from its own list of answers (the last one repeats)."""

    def __init__(self, **answers):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kw):
        self.calls.append(list(cmd))
        queue = self.answers[cmd[0]]
        ans = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(ans, BaseException):
            raise ans
        rc, out, err = ans
        return subprocess.CompletedProcess(cmd, rc, out, err)

    def count(self, prog: str) -> int:
        return sum(1 for c in self.calls if c[0] == prog)


@pytest.fixture(autouse=True)
def _fast_policy():
    slept: list[float] = []
    sq.reset_call_counts()
    with slurm_retry.retry_policy(RetryPolicy(attempts=5, max_wait_s=100, initial_s=1, sleep=slept.append,
                                              rng=random.Random(0))):
        yield slept
    sq.reset_call_counts()


@pytest.mark.parametrize("text, kind, option", [
    (SOCKET, "transient", ""),
    (NO_CTLD, "transient", ""),
    ("scontrol: error: slurm_load_ctl_conf error: Zero Bytes were transmitted or received", "transient", ""),
    ("squeue: error: slurm_load_jobs error: Invalid job id specified", None, ""),
    ("sacct: error: Problem talking to the database: Connection refused", None, ""),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "permanent", "--account"),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", "permanent", "--partition"),
    ("sbatch: error: invalid partition specified: nope", "permanent", "--partition"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "permanent", "--qos"),
    ("sbatch: error: Batch job submission failed: Job's QOS not permitted to use this partition", "permanent",
     "--qos"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
     "permanent", "--time"),
    ("sbatch: error: Batch job submission failed: Memory specification can not be satisfied", "permanent", "--mem"),
    ("sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission failed: Job violates "
     "accounting/QOS policy (job submit limit, user's size and/or time limits)", "limit", ""),
    ("scancel: error: Kill job error on job id 5: Job/step already completing or completed", None, ""),
])
def test_classify(text, kind, option):
    got = classify(text)
    assert got.kind == kind and got.option == option
    if kind == "permanent":
        assert got.fix and got.problem


def test_policy_delays_are_jittered_exponential_and_capped():
    p = RetryPolicy(attempts=10, max_wait_s=30, initial_s=2, max_delay_s=8, factor=2, rng=random.Random(1))
    d = list(p.delays())
    assert len(d) <= 9 and sum(d) <= 30 + 1e-9
    # each wait lies in [0.5, 1] x min(8, 2 * 2**k) (the last may be cut to the time left)
    for k, x in enumerate(d[:-1]):
        base = min(8, 2 * 2 ** k)
        assert 0.5 * base <= x <= base
    assert len(set(d)) == len(d)  # jitter: no two equal
    assert list(RetryPolicy(attempts=1).delays()) == []
    assert len(list(RetryPolicy(attempts=4, max_wait_s=1e9, initial_s=0.01).delays())) == 3


def test_policy_from_profile_rejects_unknown_keys():
    assert RetryPolicy.from_profile({"attempts": "3", "max_wait_s": 10}) == RetryPolicy(attempts=3, max_wait_s=10.0)
    with pytest.raises(ValueError, match="unknown key.*tries.*known"):
        RetryPolicy.from_profile({"tries": 3})
    with pytest.raises(ValueError, match="attempts >= 1"):
        RetryPolicy.from_profile({"attempts": 0})


def test_squeue_retried_until_the_controller_answers(_fast_policy):
    run = Script(squeue=[(1, "", NO_CTLD), (1, "", NO_CTLD), (0, "5|RUNNING|None|qa\n", "")])
    states = sq.query_jobs("qa", use_sacct=False, run=run)
    assert [s.job_id for s in states] == ["5"] and run.count("squeue") == 3
    assert len(_fast_policy) == 2 and sq.call_counts().query == 3 and sq.call_counts().retries == 2


def test_timeouts_are_retried_then_reported(_fast_policy):
    run = Script(scontrol=[subprocess.TimeoutExpired(["scontrol"], 60)])
    with pytest.raises(sq.SlurmUnavailableError, match=r"did not answer within .*\(5 call"):
        sq.max_array_size(run=run)
    assert run.count("scontrol") == 5 and len(_fast_policy) == 4


def test_transient_failure_past_the_cap_is_slurm_unavailable():
    run = Script(scancel=[(1, "", "scancel: error: Unable to contact slurm controller (connect failure)")])
    with pytest.raises(sq.SlurmUnavailableError, match=r"kept failing \(5 call") as info:
        sq.cancel_jobs(["5"], run=run)
    assert isinstance(info.value, sq.SlurmCommandError) and info.value.exit_code == 1


def test_ordinary_failures_are_not_retried():
    run = Script(scontrol=[(1, "", "scontrol: error: Invalid job id specified")])
    with pytest.raises(sq.SlurmCommandError):
        sq.requeue_job("5_1", run=run)
    assert run.count("scontrol") == 1


# --------------------------------------------------------------------------------------------- sbatch

def test_ambiguous_sbatch_failure_finds_the_job_instead_of_submitting_again(tmp_path, _fast_policy):
    # sbatch reached slurmctld (job 77 exists) but the answer was lost
    run = Script(sbatch=[(1, "", SOCKET)], squeue=[(0, "70|bayesim:other\n77|bayesim:tok1\n", "")])
    out = slurm_sbatch.submit_script(tmp_path / "s.sh", name="bayesim-abc", token="tok1", run=run)
    assert out.strip() == "Submitted batch job 77"
    assert run.count("sbatch") == 1 and run.count("squeue") == 1
    assert run.calls[0][:3] == ["sbatch", "--hold", "--comment=bayesim:tok1"]
    assert run.calls[1][:3] == ["squeue", "--name", "bayesim-abc"]


def test_sbatch_that_failed_before_submitting_is_retried_until_it_works(tmp_path):
    run = Script(sbatch=[(1, "", SOCKET)] * 3 + [(0, "Submitted batch job 81\n", "")], squeue=[(0, "", "")])
    out = slurm_sbatch.submit_script(tmp_path / "s.sh", name="bayesim-abc", token="t", run=run)
    assert out.strip() == "Submitted batch job 81"
    assert run.count("sbatch") == 4 and run.count("squeue") == 3  # looked before each retry


def test_sbatch_is_not_retried_when_squeue_cannot_tell(tmp_path):
    run = Script(sbatch=[(1, "", SOCKET), (0, "Submitted batch job 9\n", "")], squeue=[(1, "", NO_CTLD)])
    with pytest.raises(sq.SlurmUnavailableError, match="cannot say whether .*not retrying"):
        slurm_sbatch.submit_script(tmp_path / "s.sh", name="bayesim-abc", token="t", run=run)
    assert run.count("sbatch") == 1


def test_sbatch_exhausted_but_submitted_on_the_last_try_is_found(tmp_path):
    run = Script(sbatch=[(1, "", SOCKET)], squeue=[(0, "", "")] * 4 + [(0, "12|bayesim:t\n", "")])
    assert slurm_sbatch.submit_script(tmp_path / "s.sh", name="n", token="t", run=run).strip() == \
        "Submitted batch job 12"
    assert run.count("sbatch") == 5


@pytest.mark.parametrize("err, option, value", [
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "--qos", "gold"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "--account", "proj9"),
])
def test_permanent_sbatch_error_fails_at_once_naming_option_and_value(tmp_path, err, option, value):
    run = Script(sbatch=[(1, "", err)], squeue=[(0, "", "")])
    with pytest.raises(sq.SlurmRejectedError) as info:
        slurm_sbatch.submit_script(tmp_path / "s.sh", name="n", token="t", run=run,
                                   values={"--qos": "gold", "--account": "proj9"})
    e = info.value
    assert run.count("sbatch") == 1 and run.count("squeue") == 0
    assert e.option == option and e.value == value and e.exit_code == 1 and e.returncode == 1
    assert f"{option}={value}" in str(e) and "Fix:" in str(e)


def test_submit_limit_is_its_own_error(tmp_path):
    run = Script(sbatch=[(1, "", "sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission "
                                 "failed: Job violates accounting/QOS policy")])
    with pytest.raises(sq.SubmitLimitError):
        slurm_sbatch.submit_script(tmp_path / "s.sh", name="n", token="t", run=run)
    assert run.count("sbatch") == 1


# --------------------------------------------------------------------------------------------- the submitit hook

def test_submitit_still_submits_through_make_submission_command():
    """Fails if submitit changes the one private method bayesim-hpc hooks (see slurm_sbatch)."""
    from submitit.slurm import slurm as ss

    assert "_make_submission_command(" in inspect.getsource(ss.SlurmExecutor._submit_command)
    assert "array_ex._submit_command(" in inspect.getsource(ss.SlurmExecutor._internal_process_submissions)
    assert list(inspect.signature(ss.SlurmExecutor._make_submission_command).parameters) == \
        ["self", "submission_file_path"]


def _square(x):
    return x * x


def test_submitit_array_goes_through_our_sbatch_with_retries(tmp_path):
    import submitit
    from submitit.slurm import slurm as ss

    original = ss.SlurmExecutor._make_submission_command
    run = Script(sbatch=[(1, "", SOCKET), (0, "Submitted batch job 4242\n", "")], squeue=[(0, "", "")],
                 scontrol=[(0, "", "")])
    ex = submitit.SlurmExecutor(folder=tmp_path / "%j", max_num_timeout=0)
    ex.update_parameters(time=5, job_name="bayesim-x")
    with slurm_sbatch.sbatch_via_bayesim(name="bayesim-x", token="tk", run=run):
        jobs = ex.map_array(_square, [1, 2, 3])
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    assert run.count("sbatch") == 2 and run.count("squeue") == 1
    # submitted held; released only once the elements' log folders (--output) exist
    assert "--hold" in run.calls[0] and run.calls[-1] == ["scontrol", "release", "4242"]
    assert all((tmp_path / f"4242_{i}").is_dir() for i in range(3))
    script = open(run.calls[0][-1]).read() if (tmp_path / "4242_0").exists() else ""
    assert "#SBATCH --output" in script and "%A_%a" in script
    assert all(j.paths.submitted_pickle.exists() for j in jobs)
    assert ss.SlurmExecutor._make_submission_command is original  # put back


def test_submitit_hook_is_removed_after_an_error(tmp_path):
    import submitit
    from submitit.slurm import slurm as ss

    original = ss.SlurmExecutor._make_submission_command
    run = Script(sbatch=[(1, "", "sbatch: error: Batch job submission failed: Invalid qos specification")])
    ex = submitit.SlurmExecutor(folder=tmp_path / "%j", max_num_timeout=0)
    ex.update_parameters(time=5, job_name="bayesim-x", qos="gold")
    with pytest.raises(sq.SlurmRejectedError, match="--qos=gold"):
        with slurm_sbatch.sbatch_via_bayesim(name="bayesim-x", token="tk", values={"--qos": "gold"}, run=run):
            ex.map_array(_square, [1, 2])
    assert ss.SlurmExecutor._make_submission_command is original
