"""A study's Slurm jobs as the scheduler sees them: states per shard, element times, cancel.

These read the submissions recorded in the manifest and ask Slurm in one query; they need
no study code (``status`` and ``cancel`` use them on a directory). Mixed into
:class:`~bayesim_hpc.executors.slurm.SlurmExecutor`.

Example:
    >>> SlurmExecutor().live_states("results/s")   # doctest: +SKIP
    {0: {'state': 'RUNNING', 'reason': '', 'job_id': '1234_0'}}
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import Manifest, set_shard
from ..resultdir import ResultDir
from . import slurm_clusters, slurm_retry
from . import slurm_query as sq
from .slurm_job import read_done_record
from .slurm_submit import LIVE, element_shards, job_name
from .slurm_watch import reason_of

__all__: list[str] = []


class _StudyJobs:
    """SlurmExecutor's view of a study's jobs (see the module docstring).

    The clusters the jobs went to (``--clusters``) are read from the submission records, so a
    directory is asked about on the right cluster without its profile.
    """

    clusters: str | None = None  # SlurmExecutor's own (profile key clusters)

    @staticmethod
    def recorded_clusters(manifest: dict) -> str | None:
        """The clusters the study's jobs were submitted to (submission records), or None."""
        names = [c for s in manifest.get("submissions", []) for c in str(s.get("clusters") or "").split(",") if c]
        return ",".join(dict.fromkeys(names)) or None

    def live_states(self, rd: ResultDir | str | Path) -> dict[int, dict]:
        """shard -> {"state", "reason", "job_id"} of each shard's latest element, in one scheduler query."""
        rd = rd if isinstance(rd, ResultDir) else ResultDir(rd)
        m = Manifest(rd).read()
        subs = [s for s in m.get("submissions", []) if s.get("executor") == "slurm" and s.get("job_id")]
        if not subs:
            return {}
        # status must answer soon even when the controller does not (it then reports the manifest's states)
        with slurm_clusters.using(self.clusters or self.recorded_clusters(m)), \
                slurm_retry.retry_policy(slurm_retry.QUICK):
            states = sq.query_jobs(job_name(rd), job_ids=sorted({str(s["job_id"]) for s in subs}, key=int))
        by_id = {s.job_id: s for s in states}
        out: dict[int, dict] = {}
        for sub in sorted(subs, key=lambda s: int(s["job_id"])):
            packs = element_shards(sub)
            n = len(packs)
            for i, shards in enumerate(packs):
                eid = f"{sub['job_id']}_{i}" if n > 1 else str(sub["job_id"])
                st = by_id.get(eid) or by_id.get(f"{sub['job_id']}_{i}")
                if st is not None:
                    for shard in shards:
                        out[int(shard)] = {"state": st.state, "reason": reason_of(st), "job_id": eid}
        return out

    def element_times(self, rd: ResultDir | str | Path) -> list[dict]:
        """Predicted vs measured seconds of each submitted element (from the done records)."""
        rd = rd if isinstance(rd, ResultDir) else ResultDir(rd)
        out = []
        for sub in Manifest(rd).read().get("submissions", []):
            if sub.get("executor") != "slurm" or not sub.get("job_id"):
                continue
            elements = sub.get("elements") or []
            preds = sub.get("predicted_s") or [None] * len(elements)
            for eid, shards, pred in zip(elements, element_shards(sub), preds):
                rec = read_done_record(rd.path.resolve(), eid)
                took = (rec["ended"] - rec["started"]) if rec and rec.get("ended") and rec.get("started") else None
                out.append({"job_id": eid, "shards": shards, "resources": sub.get("resources"),
                            "predicted_s": pred, "measured_s": took})
        return out

    def cancel(self, rd: ResultDir | str | Path) -> list[str]:
        """Cancel every job of the study (recorded or not); returns the job ids scancel was given."""
        rd = rd if isinstance(rd, ResultDir) else ResultDir(rd)
        name = job_name(rd)
        m = Manifest(rd).read()
        ids = {str(s["job_id"]) for s in m.get("submissions", []) if s.get("executor") == "slurm" and s.get("job_id")}
        with slurm_clusters.using(self.clusters or self.recorded_clusters(m)):
            try:
                live = [s for s in sq.query_jobs(name, use_sacct=False) if s.state in LIVE]
            except sq.SlurmCommandError:
                live = []
            ids |= {s.array_job_id or s.job_id for s in live}
            if not ids:
                return []
            ordered = sorted(ids, key=int)
            sq.cancel_jobs(ordered)
        shards = self._shards_of(rd, live)
        if shards:
            Manifest(rd).update(lambda d: [set_shard(d, s, state="CANCELLED", reason="cancelled by bayesim-hpc cancel")
                                           for s in shards])
        return ordered

    def _shards_of(self, rd: ResultDir, states: list[sq.JobState]) -> list[int]:
        subs = {str(s["job_id"]): s for s in Manifest(rd).read().get("submissions", []) if s.get("job_id")}
        out = []
        for st in states:
            sub = subs.get(st.array_job_id or st.job_id)
            idx = st.array_task_id or 0
            if sub and idx < len(element_shards(sub)):
                out += element_shards(sub)[idx]
        return out
