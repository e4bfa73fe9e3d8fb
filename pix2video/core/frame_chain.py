"""One clip's frame chain split across workers, exactly: who holds which frames, what crosses.

Frame i at step s reads, in every decoder self-attention layer, the inputs that its
reference frames (the anchor, frame i-1, ...) gave the same layer at the same step, and
its guided latent update reads frame i-1's predicted x0 of the same step. Nothing else
couples the frames. So W workers can edit the whole clip with no approximation, each
holding runs of consecutive frame positions (`ChainSplit`): at every step a worker
receives, per decoder self-attention layer, the rows of other workers' frames its own
frames attend to (the position before each of its runs, the anchor) and, on a guided
step, one latent-sized x0 per run (of the position before it). It sends its own rows to
the workers that read them as soon as the layer has computed them, so the worker of run
r+1 computes layer l as soon as the worker of run r has: the runs move as a pipeline
offset by about one layer, not one after another.

With one long run per worker (`ChainSplit.even`) worker w starts each step about one
run after worker w-1 (its first frame needs w-1's last), so the last worker trails the
first by W-1 runs, and since a worker keeps at most two steps of sends in flight
(`begin_step`) the first then waits for it: past 3 workers that stretches every step.
Dealing short runs in turn (`ChainSplit.dealt`: run r to worker r % W, one UNet call long)
staggers the workers by about one decoder layer's transfer instead, and keeps all of them
busy: the same kind of rows cross, once per run instead of once per worker (README, "One
clip on several GPUs or machines": the scaling model).

`ChainExchange` carries the rows over a `torch.distributed` process group (gloo on CPUs, NCCL
on GPUs) with point-to-point messages. Every message's shape and order is known to both
sides from the reference plan, so nothing but the tensors crosses: each sender queues a
receiver's messages in the order that receiver reads them (`_reading_order`), which NCCL
needs (it has no tags) and which keeps the receiver from ever waiting for a message it
does not need yet. The anchor's rows fan out from the first worker instead of being
recomputed by every worker: one more row per layer on the wire instead of one more frame
of UNet work per worker per step.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ChainSplit:
    """Runs of consecutive frame positions (processing order), dealt to the workers in turn.

    Run r (positions starts[r] .. starts[r+1]-1) belongs to worker r % workers: one run
    each (`even`) or many short ones (`dealt`, which keeps every worker busy; module doc).
    """

    num_frames: int
    starts: tuple[int, ...]
    workers: int

    @classmethod
    def even(cls, num_frames: int, workers: int) -> ChainSplit:
        """One run per worker (at most one worker per frame), lengths differing by at most one."""
        workers = max(1, min(workers, num_frames))
        base, extra = divmod(num_frames, workers)
        starts, start = [], 0
        for rank in range(workers):
            starts.append(start)
            start += base + (rank < extra)
        return cls(num_frames, tuple(starts), workers)

    @classmethod
    def dealt(cls, num_frames: int, workers: int, run_length: int) -> ChainSplit:
        """Runs of `run_length` frames dealt in turn; `even` when every worker has one at most."""
        if num_frames <= workers * run_length:
            return cls.even(num_frames, workers)
        return cls(num_frames, tuple(range(0, num_frames, run_length)), workers)

    def _run(self, index: int) -> range:
        stop = self.starts[index + 1] if index + 1 < len(self.starts) else self.num_frames
        return range(self.starts[index], stop)

    def runs(self, rank: int) -> list[range]:
        return [self._run(i) for i in range(rank, len(self.starts), self.workers)]

    def positions(self, rank: int) -> list[int]:
        return [position for run in self.runs(rank) for position in run]

    def owner(self, position: int) -> int:
        return (bisect.bisect_right(self.starts, position) - 1) % self.workers

    def gathered_order(self) -> list[int]:
        """The positions of every worker's rows put one worker after another (rank order):
        `rows[argsort(gathered_order())]` is the clip in processing order."""
        return [position for rank in range(self.workers) for position in self.positions(rank)]


def chunks_of(run: range, chunk_size: int) -> list[range]:
    """The chunks (frames sharing a UNet call) a run is cut into, from its start."""
    return [
        range(start, min(start + chunk_size, run.stop))
        for start in range(run.start, run.stop, chunk_size)
    ]


@dataclass
class ChainPlace:
    """Where one worker stands in a split chain: what `edit_loop.EditLoop` is given.

    `group` is the `torch.distributed` process group of the workers (None: the default
    one), whose rank r holds `split.runs(r)`. The worker's rows (latents, masks, results)
    are its positions' rows, in processing order.
    """

    split: ChainSplit
    rank: int
    group: object | None = None

    @property
    def num_frames(self) -> int:
        return self.split.num_frames

    @property
    def runs(self) -> list[range]:
        return self.split.runs(self.rank)

    @property
    def positions(self) -> list[int]:
        return self.split.positions(self.rank)

    def rows_in_processing_order(self, rows: torch.Tensor, clip_order: list[int]) -> torch.Tensor:
        return rows  # a worker is given its positions' rows

    def rows_as_given(self, rows: torch.Tensor, clip_order: list[int]) -> torch.Tensor:
        return rows

    def exchange(
        self, plan: list[tuple[int, ...]], layers: list[str], chunk_size: int, x0_steps: set[int]
    ) -> ChainExchange:
        return ChainExchange(self, plan, layers, chunk_size, x0_steps)

    def agree_on_chunk_size(self, chunk_size: int, device: torch.device) -> int:
        """The smallest of the workers' frame batches: every worker must cut its runs the same
        way, since a sender orders its messages by the receiver's chunks."""
        import torch.distributed as dist

        value = torch.tensor([chunk_size], dtype=torch.int64, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return int(value.item())


@dataclass
class WholeClip:
    """One process editing the whole clip: the `ChainPlace` of a chain nobody shares.

    Its rows come and go in clip order; nothing is exchanged (`NoExchange`).
    """

    num_frames: int

    @property
    def runs(self) -> list[range]:
        return [range(self.num_frames)]

    @property
    def positions(self) -> list[int]:
        return list(range(self.num_frames))

    def agree_on_chunk_size(self, chunk_size: int, device: torch.device) -> int:
        return chunk_size

    def rows_in_processing_order(self, rows: torch.Tensor, clip_order: list[int]) -> torch.Tensor:
        return rows[clip_order]

    def rows_as_given(self, rows: torch.Tensor, clip_order: list[int]) -> torch.Tensor:
        """Rows in processing order back in clip order."""
        inverse = [0] * len(clip_order)
        for position, index in enumerate(clip_order):
            inverse[index] = position
        return rows[inverse]

    def exchange(
        self, plan: list[tuple[int, ...]], layers: list[str], chunk_size: int, x0_steps: set[int]
    ) -> NoExchange:
        return NoExchange()


@dataclass
class ExchangeCounts:
    """What crossed between this worker and the others (benchmarks, tests, stats)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    steps: int = 0
    per_step_bytes_sent: list[int] = field(default_factory=list)


class ChainExchange:
    """One worker's sends and receives of features and x0s, step by step.

    `plan` is the reference plan (`attention.reference_plan`), `layers` the injected layers
    in the order the UNet calls them, `chunk_size` the frames per UNet call every worker
    uses, `x0_steps` the steps whose predicted x0 a later step's guided update reads
    (`guidance.latent_guidance_schedule`'s targets; empty without guidance).
    """

    def __init__(
        self,
        place: ChainPlace,
        plan: list[tuple[int, ...]],
        layers: list[str],
        chunk_size: int,
        x0_steps: set[int],
    ) -> None:
        self.place, self.plan, self.chunk_size = place, plan, chunk_size
        self.split, self.rank = place.split, place.rank
        self.mine = set(place.positions)
        self.layer_index = {name: i for i, name in enumerate(layers)}
        self.x0_steps = x0_steps
        self.counts = ExchangeCounts()
        # the other workers reading each of my positions' features
        self.readers: dict[int, list[int]] = {}
        for position, refs in enumerate(plan):
            reader = self.split.owner(position)
            for ref in refs:
                if ref in self.mine and reader != self.rank:
                    ranks = self.readers.setdefault(ref, [])
                    if reader not in ranks:
                        ranks.append(reader)
        # the workers whose runs start right after one of mine (they read its last x0)
        after = {self.split.owner(run.stop) for run in place.runs if run.stop < len(plan)}
        destinations = ({r for ranks in self.readers.values() for r in ranks} | after) - {self.rank}
        self._orders = {
            dst: _reading_order(self.split, dst, plan, len(layers), chunk_size, self.mine)
            for dst in sorted(destinations)
        }
        self._queues: dict[int, deque] = {}
        self._ready: dict[int, dict[tuple, torch.Tensor]] = {}
        self._in_flight: deque[tuple[int, list]] = deque()  # (step, [(work, tensor)])
        self.step: int | None = None

    # ------------------------------------------------------------------ steps
    def begin_step(self, step: int) -> None:
        """Queue this step's messages to each worker that reads them, in the order it reads them.

        Waits for the sends of two steps ago (a worker runs at most two steps ahead of the
        slowest reader of its messages, which bounds the tensors held for sending).
        """
        while self._in_flight and self._in_flight[0][0] <= step - 2:
            for work, _tensor in self._in_flight.popleft()[1]:
                work.wait()
        self.step = step
        self._in_flight.append((step, []))
        self.counts.per_step_bytes_sent.append(0)
        self.counts.steps += 1
        guided = step in self.x0_steps
        for dst, items in self._orders.items():
            self._queues[dst] = deque(i for i in items if guided or i[0] != "x0")
            self._ready[dst] = {}

    def end_step(self) -> None:
        for dst, queue in self._queues.items():
            if queue:
                raise RuntimeError(
                    f"worker {self.rank} still owes worker {dst} {len(queue)} message(s) at the "
                    f"end of step {self.step}: the chain's plan and its run disagree"
                )

    def close(self) -> None:
        """Wait until every message sent has been received."""
        while self._in_flight:
            for work, _tensor in self._in_flight.popleft()[1]:
                work.wait()

    # ------------------------------------------------------------------ sending
    def has_readers(self, position: int) -> bool:
        return position in self.readers

    def send_features(self, position: int, layer: str, rows: torch.Tensor) -> None:
        """Offer `position`'s input to `layer` (branches, tokens, channels) to its readers."""
        item = ("features", position, self.layer_index[layer])
        for dst in self.readers[position]:
            self._offer(dst, item, rows)

    def send_x0(self, position: int, x0: torch.Tensor) -> None:
        """Offer a run's last predicted x0 to the worker of the next run, if a guided step
        reads it."""
        following = position + 1
        if following < len(self.plan) and following not in self.mine:
            if self.step in self.x0_steps:
                self._offer(self.split.owner(following), ("x0", position), x0)

    def _offer(self, dst: int, item: tuple, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        self._ready[dst][item] = tensor.detach().contiguous().clone()
        queue, ready = self._queues[dst], self._ready[dst]
        while queue and queue[0] in ready:
            payload = ready.pop(queue.popleft())
            work = dist.isend(payload, dst, group=self.place.group)
            self._in_flight[-1][1].append((work, payload))
            size = payload.numel() * payload.element_size()
            self.counts.bytes_sent += size
            self.counts.per_step_bytes_sent[-1] += size
            self.counts.messages_sent += 1

    # ------------------------------------------------------------------ receiving
    def receive(self, position: int, shape: torch.Size, dtype: torch.dtype, device) -> torch.Tensor:
        """The next message from `position`'s worker, which is `position`'s (features or x0)."""
        import torch.distributed as dist

        buffer = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(buffer, self.split.owner(position), group=self.place.group)
        self.counts.bytes_received += buffer.numel() * buffer.element_size()
        self.counts.messages_received += 1
        return buffer


class NoExchange:
    """The exchange of a chain nobody shares: no frame is another worker's, nothing crosses."""

    def __init__(self) -> None:
        self.counts = ExchangeCounts()

    def begin_step(self, step: int) -> None:
        pass

    def end_step(self) -> None:
        pass

    def close(self) -> None:
        pass

    def has_readers(self, position: int) -> bool:
        return False

    def send_x0(self, position: int, x0: torch.Tensor) -> None:
        pass

    def receive(self, position: int, shape: torch.Size, dtype: torch.dtype, device) -> torch.Tensor:
        raise RuntimeError(f"frame position {position} is nobody's: the whole clip is here")


def _reading_order(
    split: ChainSplit,
    reader: int,
    plan: list[tuple[int, ...]],
    num_layers: int,
    chunk_size: int,
    sender: set[int],
) -> list[tuple]:
    """What worker `reader` reads from the `sender` positions in one step, in reading order:
    ("features", position, layer) and, on guided steps, ("x0", position).

    A worker reads a remote frame's input to a layer the first time one of its rows needs
    it at that step: chunk by chunk, layer by layer, row by row, reference by reference
    (`attention.CrossFrameAttnProcessor`); its feature store keeps it for later chunks.
    After the UNet call of a chunk that starts a run, the guided update of its first row
    reads the x0 of the position before it.
    """
    order: list[tuple] = []
    seen: set[tuple[int, int]] = set()  # received once a step, kept until its last reader
    for run in split.runs(reader):
        for chunk in chunks_of(run, chunk_size):
            for layer in range(num_layers):
                for position in chunk:
                    for ref in plan[position]:
                        if ref in sender and (ref, layer) not in seen:
                            seen.add((ref, layer))
                            order.append(("features", ref, layer))
            if chunk.start == run.start and run.start - 1 in sender:
                order.append(("x0", run.start - 1))
    return order
