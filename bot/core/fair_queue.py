"""Per-server FIFO queues taken in turn, with running limits and a per-member cap.

A plain data structure: no I/O, no tasks, no clock. The scheduler asks it which job may start
next and tells it when a job starts and ends; everything else about a job lives elsewhere.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator

from bot.core.jobs import Job
from bot.core.limits import GuildLimits, member_cap_reached


class FairQueue:
    """Round-robin between servers, FIFO within each, under per-server and total limits."""

    def __init__(self, *, running_total: int, limits: Callable[[int], GuildLimits]) -> None:
        # False when the queue only mirrors a shared one: the database decides who starts.
        self.decides = True
        self._running_total = running_total
        self._limits = limits
        self._queues: dict[int, deque[Job]] = defaultdict(deque)
        self._rotation: deque[int] = deque()
        # job -> guild of every queued job: lookups scan one short queue, not all 10,000 jobs.
        self._queued_in: dict[int, int] = {}
        self._running: dict[int, Job] = {}
        # guild -> its running jobs' ids: estimating one queue must not scan every running job.
        self._running_by_guild: dict[int, set[int]] = defaultdict(set)
        # Queued jobs that may not start yet (their status message is not recorded).
        self._held: set[int] = set()
        # Queued jobs told they are starting, in that order: each keeps a slot (counted as
        # running) until it starts or leaves, so no other job takes it and unsays the promise.
        self._promised: dict[int, None] = {}
        # A shared queue's jobs of these servers that another process runs: shown and counted
        # in estimates, never counted against this process's limits nor edited from here.
        self._elsewhere: dict[int, dict[int, Job]] = defaultdict(dict)

    # Adding and removing ---------------------------------------------------------------

    def add(self, job: Job, *, held: bool = False, in_order: bool = False) -> int:
        """Append a job to its server's queue (or put it by id); return its place (1 = next)."""
        queue = self._queues[job.guild_id]
        later = (
            next((i for i, other in enumerate(queue) if other.id > job.id), None)
            if in_order
            else None
        )
        if later is not None:
            queue.insert(later, job)
        else:
            queue.append(job)
        self._queued_in[job.id] = job.guild_id
        if held:
            self._held.add(job.id)
        if job.guild_id not in self._rotation:
            self._rotation.append(job.guild_id)
        return queue.index(job) + 1 if in_order else len(queue)

    def hold(self, job_id: int) -> None:
        """Keep a queued job from starting until it is released."""
        if job_id in self._queued_in:
            self._held.add(job_id)

    def release(self, job_id: int) -> None:
        """Let a held job start when its turn comes."""
        self._held.discard(job_id)

    def remove(self, job_id: int) -> Job | None:
        """Take a queued job out of its server's queue; None if it is not queued."""
        found = self._find(job_id)
        if found is None:
            return None
        queue, index = found
        job = queue[index]
        del queue[index]
        self._queued_in.pop(job_id, None)
        self._held.discard(job_id)
        self._promised.pop(job_id, None)
        if not queue and job.guild_id in self._rotation:
            self._rotation.remove(job.guild_id)
        return job

    def remove_member(self, guild_id: int, requester_id: int) -> list[Job]:
        """Take every queued job of one member in one server out of the queue."""
        mine = [job for job in self._queues.get(guild_id, ()) if job.requester_id == requester_id]
        return [job for job in mine if self.remove(job.id) is not None]

    # Starting and finishing --------------------------------------------------------------

    def next_to_start(self, has_capacity: Callable[[int], bool] | None = None) -> Job | None:
        """Pop the next job that may start now, taking servers in turn; None if none may.

        `has_capacity` is the backend's: given the jobs on their way to it, whether one more
        could start there now (a free GPU server).
        """
        if len(self._running) >= self._running_total:
            return None
        if has_capacity is not None and not has_capacity(self.starting_count):
            return None
        # A job told it is starting goes first; a promise is cleared when its job leaves.
        promised = next((job_id for job_id in self._promised if job_id not in self._held), None)
        if promised is not None and (job := self.remove(promised)) is not None:
            self.mark_running(job)
            return job
        if not self._free_slot(has_capacity):
            return None
        for _ in range(len(self._rotation)):
            guild_id = self._rotation[0]
            self._rotation.rotate(-1)
            queue = self._queues[guild_id]
            if (
                queue
                and queue[0].id not in self._held
                and queue[0].id not in self._promised
                and self._occupied(guild_id) < self._limits(guild_id).running
            ):
                job = queue.popleft()
                self._queued_in.pop(job.id, None)
                if not queue:
                    self._rotation.remove(guild_id)
                self.mark_running(job)
                return job
        return None

    def mark_running(self, job: Job) -> None:
        """Count a job as running (also one resumed past the limits: it holds a slot upstream)."""
        self._running[job.id] = job
        self._running_by_guild[job.guild_id].add(job.id)

    def finish(self, job_id: int) -> Job | None:
        """Free a running job's slot; return the job if it was running."""
        job = self._running.pop(job_id, None)
        if job is not None:
            self._running_by_guild[job.guild_id].discard(job_id)
        return job

    def update(self, job: Job) -> bool:
        """Replace the stored copy of a queued or running job; True if it was just placed.

        Placed: a running job that had no prediction now has one, so it is no longer counted
        as on its way to the backend.
        """
        if job.id in self._running:
            placed = self._running[job.id].prediction_id is None and job.prediction_id is not None
            self._running[job.id] = job
            return placed
        if found := self._find(job.id):
            queue, index = found
            queue[index] = job
        return False

    # Reading ----------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The newest copy of a running or queued job."""
        if job_id in self._running:
            return self._running[job_id]
        found = self._find(job_id)
        return found[0][found[1]] if found else None

    def running_job(self, job_id: int) -> Job | None:
        """The job if it is running."""
        return self._running.get(job_id)

    def promise_start(self, job_id: int, has_capacity: Callable[[int], bool] | None = None) -> bool:
        """True if a queued job will start the moment nothing holds it back.

        A True is kept: the job holds a free slot until it starts or leaves the queue.
        """
        if job_id in self._promised:
            return True
        if not self.decides:
            return False
        guild_id = self._queued_in.get(job_id)
        if guild_id is None or not self._free_slot(has_capacity):
            return False
        queue = self._queues[guild_id]
        # A free slot means no other startable job waits: each one starts as a slot frees.
        if (
            queue
            and queue[0].id == job_id
            and self._occupied(guild_id) < self._limits(guild_id).running
        ):
            self._promised[job_id] = None
            return True
        return False

    def _free_slot(self, has_capacity: Callable[[int], bool] | None) -> bool:
        """True if a job nobody was promised could start now, promised ones counted in."""
        if len(self._running) + len(self._promised) >= self._running_total:
            return False
        return has_capacity is None or has_capacity(self.starting_count + len(self._promised))

    def _occupied(self, guild_id: int) -> int:
        """A server's running jobs and those promised to start."""
        promised = sum(1 for job_id in self._promised if self._queued_in.get(job_id) == guild_id)
        return len(self._running_by_guild[guild_id]) + promised

    def position(self, job_id: int) -> int | None:
        """A queued job's place in its server's queue (1 = next), or None."""
        found = self._find(job_id)
        return found[1] + 1 if found else None

    def queued(self, guild_id: int) -> list[Job]:
        """A server's queued jobs, next first."""
        return list(self._queues.get(guild_id, ()))

    def running_in(self, guild_id: int) -> list[Job]:
        """A server's running jobs (those of other processes first), in the order they started."""
        ids = self._running_by_guild.get(guild_id, ())
        here = [job for job_id, job in self._running.items() if job_id in ids]
        return [*self._elsewhere.get(guild_id, {}).values(), *here]

    def running_unordered(self, guild_id: int) -> list[Job]:
        """A server's running jobs in no particular order, without scanning every running job."""
        here = [self._running[job_id] for job_id in self._running_by_guild.get(guild_id, ())]
        return [*here, *self._elsewhere.get(guild_id, {}).values()]

    def run_elsewhere(self, job: Job) -> None:
        """Note a job of these servers that another process runs (a shared queue)."""
        self._elsewhere[job.guild_id][job.id] = job

    def end_elsewhere(self, job_id: int) -> Job | None:
        """Forget a job another process ran (it ended, came back, or runs here); return it."""
        for jobs in self._elsewhere.values():
            if (job := jobs.pop(job_id, None)) is not None:
                return job
        return None

    def elsewhere(self) -> set[int]:
        """The jobs of these servers that other processes run."""
        return {job_id for jobs in self._elsewhere.values() for job_id in jobs}

    def guilds_waiting(self) -> Iterator[int]:
        """Every server with a job in its queue."""
        return (guild_id for guild_id, queue in self._queues.items() if queue)

    def pending_for(self, guild_id: int, requester_id: int) -> int:
        """Count a member's queued and running jobs in a server."""
        queued = sum(
            1 for job in self._queues.get(guild_id, ()) if job.requester_id == requester_id
        )
        running = sum(
            1
            for job_id in self._running_by_guild.get(guild_id, ())
            if self._running[job_id].requester_id == requester_id
        )
        return queued + running

    def check_member_cap(self, guild_id: int, requester_id: int) -> None:
        """Raise QueueFull if the member already has as many requests as the server allows."""
        limit = self._limits(guild_id).queued_per_member
        if self.pending_for(guild_id, requester_id) >= limit:
            raise member_cap_reached(limit)

    @property
    def running_count(self) -> int:
        """How many jobs run now."""
        return len(self._running)

    @property
    def queued_count(self) -> int:
        """How many jobs wait (held ones included) in every server's queue."""
        return len(self._queued_in)

    @property
    def starting_count(self) -> int:
        """How many running jobs have no prediction yet (on their way to the backend)."""
        return sum(1 for job in self._running.values() if job.prediction_id is None)

    @property
    def is_empty(self) -> bool:
        """True when nothing is queued or running."""
        return not self._running and not self._queued_in

    def _find(self, job_id: int) -> tuple[deque[Job], int] | None:
        """Locate a queued job: its server's queue and its index there."""
        guild_id = self._queued_in.get(job_id)
        queue = self._queues.get(guild_id) if guild_id is not None else None
        if queue is None:
            return None
        for index, job in enumerate(queue):
            if job.id == job_id:
                return queue, index
        return None
