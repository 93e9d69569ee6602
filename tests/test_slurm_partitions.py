"""Partition choice (slurm_partitions) from canned Slurm output; no cluster needed.

``SCONTROL_LOCAL``/``SINFO_LOCAL`` were recorded on the local test cluster (scripts/local-slurm.sh):
``scontrol -a show partition -o`` and ``sinfo -h -N -o '%N|%R|%c|%m|%G'``. ``SCONTROL_SITE`` is the
same format with a site's restrictions written in (accounts, groups, a GPU partition, a drained one).
"""

from __future__ import annotations

import subprocess

import pytest

from bayesim_hpc.executors.slurm_partitions import (
    Partition,
    PartitionError,
    Placement,
    Submitter,
    choose_partition,
    largest,
    parse_partitions,
    read_partitions,
)
from bayesim_hpc.executors.slurm_profile import Resources, load_profile

SCONTROL_LOCAL = """\
PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=32000M,node=2,billing=8
PartitionName=other AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=32000M,node=2,billing=8
PartitionName=short AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=00:10:00 DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=00:30:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=4000 TRES=cpu=8,mem=32000M,node=2,billing=8
"""
SINFO_LOCAL = """\
n1|other|4|16000|(null)
n1|debug|4|16000|(null)
n1|short|4|16000|(null)
n2|other|4|16000|(null)
n2|debug|4|16000|(null)
n2|short|4|16000|(null)
"""


def _site_line(name: str, **changes: str) -> str:
    """A partition line in the recorded format, with some fields changed."""
    line = SCONTROL_LOCAL.splitlines()[0].replace("PartitionName=debug", f"PartitionName={name}")
    line = line.replace("Default=YES", "Default=NO")
    for key, value in changes.items():
        fields = line.split(" ")
        fields = [f"{key}={value}" if f.startswith(f"{key}=") else f for f in fields]
        if not any(f.startswith(f"{key}=") for f in fields):
            fields.append(f"{key}={value}")
        line = " ".join(fields)
    return line


SCONTROL_SITE = "\n".join([
    _site_line("express", MaxTime="01:00:00", Nodes="c[1-4]"),
    _site_line("compute", MaxTime="2-00:00:00", Nodes="c[1-4]", Default="YES"),
    _site_line("long", MaxTime="7-00:00:00", Nodes="c[1-4]", AllowAccounts="physics,chem"),
    _site_line("bigmem", MaxTime="2-00:00:00", Nodes="m1", MaxMemPerNode="UNLIMITED"),
    _site_line("gpu", MaxTime="04:00:00", Nodes="g1"),
    _site_line("staff", MaxTime="00:30:00", Nodes="c[1-4]", AllowGroups="hpcstaff"),
    _site_line("maint", MaxTime="00:10:00", Nodes="c[1-4]", State="DRAIN"),
    _site_line("percpu", MaxTime="00:20:00", Nodes="c[1-4]", MaxMemPerNode="UNLIMITED").replace(
        "MaxMemPerNode=UNLIMITED", "MaxMemPerCPU=1000"),
]) + "\n"
SINFO_SITE = "".join(
    [f"c{i}|{p}|32|192000|(null)\n" for i in range(1, 5) for p in ("express", "compute", "long", "staff", "maint",
                                                                   "percpu")]
    + ["m1|bigmem|64|1536000|(null)\n", "g1|gpu|32|384000|gpu:a100:4(S:0-1)\n"])
ALICE = Submitter(user="alice", account="stats", groups=("alice", "users"))


def local() -> list[Partition]:
    return parse_partitions(SCONTROL_LOCAL, SINFO_LOCAL)


def site() -> list[Partition]:
    return parse_partitions(SCONTROL_SITE, SINFO_SITE)


def test_recorded_partitions_are_read_with_their_limits():
    parts = {p.name: p for p in local()}
    assert list(parts) == ["debug", "other", "short"]
    assert parts["debug"].default and not parts["other"].default
    assert (parts["debug"].max_time_min, parts["debug"].mem_mb, parts["debug"].cpus) == (None, 16000, 4)
    assert (parts["short"].max_time_min, parts["short"].default_time_min, parts["short"].mem_mb) == (30, 10, 4000)
    assert parts["short"].nodes == 2 and parts["short"].state == "UP"
    assert parts["short"].allow_accounts is None and parts["short"].allow_groups is None


def test_site_restrictions_and_limits_are_parsed():
    parts = {p.name: p for p in site()}
    assert parts["compute"].max_time_min == 2 * 1440 and parts["long"].max_time_min == 7 * 1440
    assert parts["long"].allow_accounts == ("physics", "chem")
    assert parts["staff"].allow_groups == ("hpcstaff",)
    assert parts["gpu"].gpu_only and not parts["compute"].gpu_only
    assert parts["maint"].state == "DRAIN"
    assert parts["bigmem"].mem_mb == 1536000 and parts["bigmem"].cpus == 64
    assert parts["percpu"].mem_mb == 32 * 1000  # MaxMemPerCPU times the node's CPUs
    assert parts["express"].mem_mb == 192000 and parts["express"].cpus == 32  # the nodes decide


@pytest.mark.parametrize("time_min, mem_mb, cpus, want", [
    (20, 2048, 1, "short"),            # fits all three: the smallest
    (30, 4000, 4, "short"),            # exactly at short's limits
    (31, 2048, 1, "debug,other"),      # over short's MaxTime: the two unlimited ones tie
    (20, 8192, 1, "debug,other"),      # over short's memory per node
    (20, None, 1, "short"),            # no memory asked: memory does not decide
])
def test_smallest_partition_that_holds_the_request(time_min, mem_mb, cpus, want):
    choice = choose_partition(local(), Resources(time_min=time_min, mem_mb=mem_mb, cpus_per_task=cpus))
    assert choice.partition == want
    assert not choice.named and "smallest" in choice.why


def test_why_names_the_partitions_too_small_and_larger():
    choice = choose_partition(local(), Resources(time_min=120, mem_mb=2048))
    assert "2 tie" in choice.why
    assert any("too small: short (time 120 min > MaxTime 30 min)" in n for n in choice.notes)
    choice = choose_partition(local(), Resources(time_min=10, mem_mb=2048))
    assert any(n == "larger: debug, other" for n in choice.notes)


@pytest.mark.parametrize("res, field, most", [
    (Resources(time_min=20, mem_mb=20 * 1024), "mem_gb", "15.6 GB"),
    (Resources(time_min=20, mem_mb=2048, cpus_per_task=8), "cpus_per_task", "at most 4"),
])
def test_a_request_no_partition_holds_is_refused_naming_the_largest_and_the_field(res, field, most):
    with pytest.raises(PartitionError) as err:
        choose_partition(local(), res)
    msg = str(err.value)
    assert err.value.exit_code == 8
    assert "the largest, debug (MaxTime unlimited, 16000 MB and 4 CPUs per node)" in msg
    assert field in msg and most in msg


def test_time_over_every_maxtime_names_the_longest():
    with pytest.raises(PartitionError, match=r"long \(MaxTime 10080 min.*time \(profile key time, option --time\) "
                                             r"to at most 10080 min"):
        choose_partition(site(), Resources(time_min=8 * 1440, mem_mb=2048), Submitter("bob", account="physics"))


def test_named_partition_is_kept_but_checked():
    assert choose_partition(local(), Resources(time_min=600, partition="debug")).partition == "debug"
    assert choose_partition(local(), Resources(time_min=600, partition="short,debug")).partition == "short,debug"
    with pytest.raises(PartitionError, match=r"short.*time 60 min > MaxTime 30 min.*at most 30 min.*debug, other"):
        choose_partition(local(), Resources(time_min=60, partition="short"))
    with pytest.raises(PartitionError, match=r"no partition gpuq on this cluster; it has debug, other, short"):
        choose_partition(local(), Resources(time_min=60, partition="gpuq"))


def test_partitions_the_user_may_not_use_are_not_chosen():
    # 20 min: express (1 h) is the smallest usable; staff (30 min, wrong group), maint (DRAIN) and
    # percpu (20 min) are smaller but not usable or (percpu) usable and smaller still
    choice = choose_partition(site(), Resources(time_min=20, mem_mb=2048), ALICE)
    assert choice.partition == "percpu"
    notes = " ".join(choice.notes)
    assert "staff (AllowGroups=hpcstaff" in notes and "maint (State=DRAIN)" in notes and "gpu (GPU nodes only)" in notes
    # 3 days: only long (7 days) holds it, and alice's account may not use it
    with pytest.raises(PartitionError, match=r"largest, bigmem .*time 4320 min > MaxTime 2880 min.*at most 2880 min"):
        choose_partition(site(), Resources(time_min=3 * 1440, mem_mb=2048), ALICE)
    physics = Submitter(user="bob", account="physics", groups=("users",))
    assert choose_partition(site(), Resources(time_min=3 * 1440, mem_mb=2048), physics).partition == "long"
    staff = Submitter(user="carol", account="stats", groups=("hpcstaff",))
    assert choose_partition(site(), Resources(time_min=25, mem_mb=2048), staff).partition == "staff"


def test_big_memory_goes_to_bigmem_and_candidates_limit_the_choice():
    assert choose_partition(site(), Resources(time_min=60, mem_mb=500 * 1024), ALICE).partition == "bigmem"
    # listed on purpose, a GPU partition may be chosen; the others are not considered
    choice = choose_partition(site(), Resources(time_min=60, mem_mb=2048), ALICE, candidates=["gpu", "compute"])
    assert choice.partition == "gpu"
    with pytest.raises(PartitionError, match=r"no partition nope on this cluster"):
        choose_partition(site(), Resources(time_min=60), ALICE, candidates=["nope"])


def test_unreadable_partitions_leave_the_request_to_slurm():
    choice = choose_partition(None, Resources(time_min=60))
    assert choice.partition is None and "could not be read" in choice.why
    assert choose_partition(None, Resources(time_min=60, partition="x")).partition == "x"


def test_largest_caps_escalation_at_the_biggest_usable_partition():
    assert largest(local()) == (None, 16000)
    assert largest(site(), ALICE) == (2 * 1440, 1536000)
    assert largest(site(), ALICE, candidates=["express"]) == (60, 192000)


def test_read_partitions_makes_two_calls_and_survives_a_missing_scontrol():
    calls = []

    def run(argv, **kw):
        calls.append(argv)
        out = SCONTROL_LOCAL if argv[0] == "scontrol" else SINFO_LOCAL
        return subprocess.CompletedProcess(argv, 0, out, "")

    parts = read_partitions(run=run)
    assert [p.name for p in parts] == ["debug", "other", "short"]
    assert calls == [["scontrol", "-a", "show", "partition", "-o"], ["sinfo", "-h", "-N", "-o", "%N|%R|%c|%m|%G"]]

    def missing(argv, **kw):
        raise FileNotFoundError(argv[0])

    assert read_partitions(run=missing) is None


def test_executor_puts_the_choice_into_sbatch_parameters_and_caps_escalation(tmp_path):
    from bayesim_hpc.executors.slurm import SlurmExecutor

    ex = SlurmExecutor(time_min=20, mem=2, escalate={"mem_max_gb": 64, "time_max_min": 600})
    ex.placement = Placement(read=local, who=lambda parts: None)
    assert ex.sbatch_parameters("x", 3)["partition"] == "short"
    assert ex.sbatch_parameters("x", 3, Resources(time_min=120, mem_mb=2048))["partition"] == "debug,other"
    ex.placement = Placement(read=lambda: None)
    assert "partition" not in ex.sbatch_parameters("x", 3)
    with pytest.raises(PartitionError):
        SlurmExecutor(time_min=20, mem=20).placement.__class__(read=local, who=lambda p: None).choose(
            Resources(time_min=20, mem_mb=20 * 1024))


def test_bad_node_cap_counts_the_partitions_elements_go_to():
    """The bad-node cap keeps a node in each partition the study uses: the chosen ones, not the
    profile's (None when bayesim-hpc chooses)."""
    from bayesim_hpc.executors.slurm import SlurmExecutor

    ex = SlurmExecutor(time_min=20, mem=2)
    ex.placement = Placement(read=local, who=lambda parts: None)
    assert ex.partitions_used([ex.base, Resources(time_min=120, mem_mb=2048)]) == {"short", "debug,other"}
    ex.placement = Placement(read=lambda: None)  # partitions unknown: Slurm's default
    assert ex.partitions_used([ex.base]) == {None}


def test_escalation_stops_at_the_largest_partition():
    from types import SimpleNamespace

    from bayesim_hpc.executors.slurm import SlurmExecutor

    ex = SlurmExecutor(time_min=20, mem=2, escalate={"mem_max_gb": 64, "time_max_min": 2880})
    ex.placement = Placement(["short"], read=local, who=lambda parts: None)
    ctx = SimpleNamespace(study=SimpleNamespace(space=None), rd=SimpleNamespace(read_frozen=lambda: SimpleNamespace(
        shards=[])))
    (res, choice), = ex.check_partitions(ctx, [0, 1])
    assert res == ex.base and choice.partition == "short"
    assert (ex.escalation.time_max_min, ex.escalation.mem_max_gb) == (30, 4000 / 1024)
    assert ex.base.escalated("TIMEOUT", ex.escalation).time_min == 30  # never more than short allows


def test_profile_partitions_key_is_checked(tmp_path):
    good = tmp_path / "p.yaml"
    good.write_text("partitions: [short, debug]\n")
    assert load_profile(str(good))["partitions"] == ["short", "debug"]
    bad = tmp_path / "b.yaml"
    bad.write_text("partitions: short\n")
    with pytest.raises(ValueError, match="'partitions' must be a list"):
        load_profile(str(bad))
