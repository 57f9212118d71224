"""The decoder scheduler in simulated time: the real `DecoderScheduler`, with the speech decoder and the LLM replaced
by cost models calibrated on an H200, to compare scheduling rules on arrival patterns without a GPU.

Why: which chunks share a decoder pass is decided by the scheduler's code alone, given when tokens arrive and how
long passes take. Device time is scarce, so a rule (deadline batching, a chunk schedule) is first tried here on
bursts and on staggered users, in seconds on a CPU; only the rules that help go to the GPU suite. The figures this
prints are a model's: they rank rules against each other and are never reported as GPU measurements.

The cost models and the decoder's bookkeeping are in bench/sim_costs.py.

    python -m bench.sim_schedule --validate --streams 16,32 --stagger 1,8 --chunking fixed,adaptive
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from bench.playback import JITTER_BUFFER_S, TurnResult, level_summary
from bench.sim_admission import Control, ControllerSpec, admission_line, admission_summary, averaged_admission
from bench.sim_costs import SAMPLE_RATE, VALIDATION, Clock, CostModel, SimRequest, SimStream, fit_passes
from glm4voice_api.config import SpeechDecoderSettings
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, FixedSchedule
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.llm_pause import LLMPause

SCHEDULE = tuple(SpeechDecoderSettings().schedule)
"""The server's chunk schedule (`--schedule` compares others)."""


def _model_value(text: str) -> float | tuple[int, ...]:
    """A --model value: a number, or a list of sizes (`batch_buckets=[1,2,4,8,12,16,24,32]`)."""
    return tuple(json.loads(text)) if text.startswith("[") else float(text)


class _Pass:
    def __init__(self, world: World, requests: list[SimRequest]) -> None:
        self.world, self.requests = world, requests

    def step(self) -> bool:
        return False

    def finish(self) -> list[SimRequest]:
        longest = max(len(r.prompt_tokens) + len(r.tokens) for r in self.requests)
        w = self.world
        seconds = w.cost.pass_s(len(self.requests), longest, beside_llm=w.generating > 0 and not w.held)
        w.decoder_busy_until = w.clock.t + seconds
        w.run_until(w.clock.t + seconds)
        return self.requests

    def abort(self) -> None:
        pass


class _Decoder:
    sample_rate = SAMPLE_RATE
    device = "cpu"

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        return self.world.cost.batch_buckets  # as a graphed decoder's: the scheduler's free rows follow them

    def open_stream(self, voice: object, config: DecoderStreamConfig) -> SimStream:
        return SimStream(config)

    def begin_batch(self, requests: list[SimRequest]) -> _Pass:
        return _Pass(self.world, requests)


class _Gate:
    """vLLM's step gate (plugins/glm4voice_vllm/step_gate.py) in the simulated world: while closed, the LLM's next step
    waits (at most `MAX_HOLD_S`), and the pass holding it runs at its alone speed."""

    MAX_HOLD_S = 0.25

    def __init__(self, world: World) -> None:
        self.world = world

    def close(self) -> None:
        self.world.held = True

    def open(self) -> None:
        self.world.held = False
        self.world.release()


@dataclass
class _Turn:
    session: int
    result: TurnResult
    sent: float
    generated: int = 0
    stream: object = None
    done: bool = False
    admitted_at: float | None = None


@dataclass
class SimResult:
    streams: int
    stagger_s: float
    hold: bool
    turns: int
    gap_free_fraction: float
    playable_p50_ms: float
    playable_p99_ms: float
    first_audio_p50_ms: float
    passes: int
    rows_per_pass: float
    decoder_busy_s: float
    llm_tokens_per_s: float
    underruns: int
    admission: dict = field(default_factory=dict)
    """With a limit (fixed or a controller's): offered, admitted, queue waits, the limit's path (sim_admission)."""
    extra: dict = field(default_factory=dict)
    stutter_at_s: list[float] = field(default_factory=list)
    """Each gapped turn's audio before the chunk that set its playable latency (where the listener ran dry)."""


class World:
    """Sessions, the LLM and the clock; the scheduler is driven as its thread would drive itself (`_serve`)."""

    def __init__(
        self,
        cost: CostModel,
        *,
        hold: bool,
        seconds: float = 60.0,
        adaptive: bool = False,
        first_rank_s: float = -1.0,
        first_company_s: float | None = None,
        solo: tuple[int, float] = (0, 0.0),
        turns: int | None = None,
        max_active: int | None = None,
        context: int = 100,
        controller: ControllerSpec | str | None = None,
        max_wait_s: float | None = None,
        retry_s: float = 2.0,
        schedule: tuple[int, ...] = SCHEDULE,
    ) -> None:
        self.cost, self.seconds, self.max_turns, self.max_active = cost, seconds, turns, max_active
        self.max_wait_s, self.retry_s = max_wait_s, retry_s
        """A turn queued longer than `max_wait_s` is refused (429); its session sends it again `retry_s` later."""
        self.active = self.peak_active = 0
        self.queued: list[_Turn] = []  # admission queue (FIFO), when `max_active` bounds the replies at once
        self.all_turns: list[_Turn] = []
        self.clock = Clock()
        config = DecoderStreamConfig(schedule=schedule, max_prompt_tokens=context)
        policy = (
            AdaptiveChunkPolicy()
            if adaptive
            else FixedSchedule(config.schedule, first_rank_s=first_rank_s, first_company_s=first_company_s)
        )
        self.scheduler = DecoderScheduler(
            _Decoder(self),  # type: ignore[arg-type]
            config,
            policy=policy,
            max_batch=32,
            hold_lead_s=0.3 if hold else None,
            llm_pause=LLMPause(_Gate(self), solo[0], solo[1], clock=self.clock),  # (0, 0): the LLM never held
            clock=self.clock,
        )
        self.held = self.deferred = False  # the gate is closed; a step waits for it
        self.events: list[tuple[float, int, str, object]] = []  # (time, seq, kind, payload)
        self._seq = 0
        self.waiting: list[_Turn] = []  # sent, not yet in the LLM's batch
        self.running: list[_Turn] = []
        self.step_end: float | None = None
        self.decoder_busy_until = 0.0
        self.tokens = 0
        self.turns: list[TurnResult] = []
        self.sent: dict[int, int] = {}  # turns sent per session
        self.tok_queue: list[_Turn] = []
        self.tok_busy = False
        self.control = Control(self, controller) if controller is not None else None

    @property
    def generating(self) -> int:
        return len(self.running)

    def at(self, t: float, kind: str, payload: object = None) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, payload))

    # -- LLM --------------------------------------------------------------------------------------------------

    def _start_step(self) -> None:
        if self.held and not self.deferred and (self.running or self.waiting):  # the gate holds it, for its bound
            self.deferred, self.step_end = True, None
            self.at(self.clock.t + _Gate.MAX_HOLD_S, "release")
            return
        self.deferred = False
        joining, self.waiting = self.waiting, []
        self.running += joining
        if not self.running:
            self.step_end = None
            return
        c = self.cost
        seconds = c.llm_step_s + c.llm_step_per_seq_s * len(self.running) + (c.prefill_s if joining else 0.0)
        if self.decoder_busy_until > self.clock.t:
            seconds *= c.slowdown
        self.step_end = self.clock.t + seconds
        self.at(self.step_end, "step")

    def release(self) -> None:
        """The gate opened (or held its bound): a waiting step starts."""
        if self.deferred and self.step_end is None:
            self._start_step()

    def _end_step(self) -> None:
        for turn in list(self.running):
            i = turn.generated
            turn.generated += 1
            self.tokens += 1
            if i % 39 >= 13:  # 13 text tokens, then 26 audio tokens
                turn.stream.push([i])  # type: ignore[attr-defined]
            if turn.generated == self.cost.reply_tokens:
                turn.stream.push([], final=True)  # type: ignore[attr-defined]
                self.running.remove(turn)
        self._start_step()

    def _send(self, session: int) -> None:
        result = TurnResult(session=session, turn=self.sent.get(session, 0), status=200, started_s=self.clock.t)
        self.sent[session] = result.turn + 1
        turn = _Turn(session, result, self.clock.t)
        self.turns.append(result)
        self.all_turns.append(turn)
        if self.max_active is not None and (self.active >= self.max_active or self.queued):
            self.queued.append(turn)
            if self.max_wait_s is not None:
                self.at(self.clock.t + self.max_wait_s, "expire", turn)
        else:
            self._admit(turn)

    def _admit(self, turn: _Turn) -> None:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        turn.admitted_at = self.clock.t
        self.at(self.clock.t + self.cost.upload_s, "tokenize", turn)

    def fill(self) -> None:
        """Admit queued turns, first come first served, while the limit has room."""
        while self.queued and (self.max_active is None or self.active < self.max_active):
            self._admit(self.queued.pop(0))

    def _expire(self, turn: _Turn) -> None:
        """The turn waited `max_wait_s` in the queue: a 429; the client sends it again after `retry_s`."""
        if turn.admitted_at is not None or turn not in self.queued:
            return
        self.queued.remove(turn)
        turn.result.status = 429
        self.sent[turn.session] -= 1  # the retry is the same turn
        if self.clock.t < self.seconds:
            self.at(self.clock.t + self.retry_s, "send", turn.session)

    def _tokenize(self, turn: _Turn | None) -> None:
        """A question joins the tokenizer's queue (None: its batch ended); an idle tokenizer takes up to a batch."""
        if turn is not None:
            self.tok_queue.append(turn)
        else:
            self.tok_busy = False
        if self.tok_busy or not self.tok_queue:
            return
        c = self.cost
        batch, self.tok_queue = self.tok_queue[: c.tokenizer_batch], self.tok_queue[c.tokenizer_batch :]
        self.tok_busy = True
        done = self.clock.t + c.tokenizer_fixed_s + c.tokenizer_clip_s * len(batch)
        for t in batch:
            self.at(done, "enter", t)
        self.at(done, "tokenize", None)

    def _enter(self, turn: _Turn) -> None:
        s = self.scheduler.open_stream(live=True)
        s._send = lambda item, turn=turn: self._audio(turn, item)  # type: ignore[method-assign]
        turn.stream = s
        self.waiting.append(turn)
        if self.step_end is None and not self.deferred:
            self._start_step()

    def _audio(self, turn: _Turn, item: object) -> None:
        if isinstance(item, np.ndarray):
            turn.result.arrivals.append((self.clock.t - turn.sent, len(item) / SAMPLE_RATE))
        elif item is None and not turn.done:  # the reply is complete: the client sends its next turn
            turn.done = True  # (closing the stream sends its end again)
            turn.stream.close()  # type: ignore[attr-defined]
            self.active -= 1
            self.fill()  # a lowered limit takes effect here: no waiter is admitted while active >= the limit
            more = self.max_turns is None or self.sent[turn.session] < self.max_turns
            if more and self.clock.t < self.seconds:
                self._send(turn.session)

    def _fire(self, kind: str, payload: object) -> None:
        if kind == "step":
            self._end_step()
        elif kind == "send":
            self._send(payload)  # type: ignore[arg-type]
        elif kind == "tokenize":
            self._tokenize(payload)  # type: ignore[arg-type]
        elif kind == "enter":
            self._enter(payload)  # type: ignore[arg-type]
        elif kind == "expire":
            self._expire(payload)  # type: ignore[arg-type]
        elif kind == "release":
            self.release()
        elif kind == "control":
            self.control.step()  # type: ignore[union-attr]

    def run_until(self, t: float, *, stop_on_work: bool = False) -> None:
        """Fire every event up to `t`; with `stop_on_work`, stop at the first one that queued work for the decoder."""
        while self.events and self.events[0][0] <= t:
            when, _, kind, payload = heapq.heappop(self.events)
            self.clock.t = when
            self._fire(kind, payload)
            if stop_on_work and not self.scheduler._queue.empty():
                return
        self.clock.t = max(self.clock.t, t)

    # -- the scheduler's loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        s = self.scheduler
        streams: set = set()
        decoded = False
        while self.events or streams or not s._queue.empty():
            timeout = 0.0 if decoded else s._wait_time(streams, False)
            if timeout is None:
                if not self.events and s._queue.empty():
                    raise RuntimeError(f"stuck: {len(streams)} streams wait and nothing will wake them")
                self.run_until(self.events[0][0] if self.events else self.clock.t, stop_on_work=True)
            else:
                self.run_until(self.clock.t + timeout, stop_on_work=True)
            for item in s._drain(0.0):
                s._handle(item, streams)
            batch = s._pick(streams)
            decoded = bool(batch)
            if batch:
                s._decode(batch, streams)


def simulate(streams: int, stagger_s: float, *, seed: int = 0, cost: CostModel | None = None, **world) -> SimResult:
    """`streams` sessions, each started at a random moment within `stagger_s` seconds (the ladder's bursts: 1 s),
    sending `turns` turns in a row (None: until `seconds` have passed), at most `max_active` replies at once (the
    others queue), or what `controller` (`sim_admission.parse_controller`) allows; a wait past `max_wait_s`: 429.
    `world`: `World`'s options (`hold` required)."""
    rng = random.Random(seed)

    async def go() -> SimResult:  # ScheduledStream takes the running loop (never used: audio goes to _audio)
        sim = World(cost or CostModel(), **world)
        for i in range(streams):
            sim.at(rng.uniform(0.0, stagger_s), "send", i)
        sim.run()
        return _summarise(sim, streams, stagger_s, world["hold"])

    return asyncio.run(go())


def _summarise(world: World, streams: int, stagger_s: float, hold: bool) -> SimResult:
    summary = level_summary(streams, world.turns, world.clock.t)
    stats = [t.stats for t in world.turns if t.stats is not None]
    gap_free = sum(st.startup_slack_s <= JITTER_BUFFER_S for st in stats) / max(1, len(stats))
    s = world.scheduler
    return SimResult(
        streams=streams,
        stagger_s=stagger_s,
        hold=hold,
        turns=len(stats),
        gap_free_fraction=round(gap_free, 3),
        playable_p50_ms=summary.playable_ms.p50 or 0.0,
        playable_p99_ms=summary.playable_ms.p99 or 0.0,
        first_audio_p50_ms=summary.first_audio_ms.p50 or 0.0,
        passes=s.batches,
        rows_per_pass=round(s.chunks / max(1, s.batches), 2),
        decoder_busy_s=round(s.busy_seconds, 2),
        llm_tokens_per_s=round(world.tokens / max(1e-9, world.clock.t), 1),
        underruns=s.underruns,
        admission=admission_summary(world) if world.max_active is not None else {},
        extra={"held_passes": s.held_passes, "simulated_s": round(world.clock.t, 1)},
        stutter_at_s=[round(st.worst_audio_s, 2) for st in stats if st.startup_slack_s > JITTER_BUFFER_S],
    )


def averaged(seeds: int, **kwargs) -> dict:
    """`simulate` over `seeds` arrival draws: the mean of each figure, and the range of the gap-free fraction."""
    runs = [simulate(seed=k, **kwargs) for k in range(seeds)]
    out = asdict(runs[0])
    figures = "gap_free_fraction playable_p50_ms playable_p99_ms first_audio_p50_ms passes rows_per_pass decoder_busy_s"
    for key in (*figures.split(), "llm_tokens_per_s", "underruns", "turns"):
        out[key] = round(sum(getattr(r, key) for r in runs) / seeds, 3)
    out["gap_free_range"] = [min(r.gap_free_fraction for r in runs), max(r.gap_free_fraction for r in runs)]
    out["seeds"] = seeds
    out["stutter_at_s"] = dict(sorted(Counter(x for r in runs for x in r.stutter_at_s).items()))
    out["admission"] = averaged_admission([r.admission for r in runs])
    out.pop("extra")
    return out


def _line(label: str, r: dict) -> str:
    return (
        f"{label}: gap-free {r['gap_free_fraction']:.2f} ({r['gap_free_range'][0]:.2f}-{r['gap_free_range'][1]:.2f}), "
        f"playable {r['playable_p50_ms']:.0f} / {r['playable_p99_ms']:.0f} ms, first audio {r['first_audio_p50_ms']:.0f}"
        f" ms, {r['passes']:.0f} passes of {r['rows_per_pass']:.1f} rows, decoder busy {r['decoder_busy_s']:.1f} s, "
        f"LLM {r['llm_tokens_per_s']:.0f} tok/s, stutters at (s of audio: turns) {r.get('stutter_at_s')}"
        + admission_line(r.get("admission", {}))
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="32", help="comma-separated session counts")
    p.add_argument("--stagger", default="1,8", help="comma-separated seconds over which sessions start")
    p.add_argument("--hold", default="off,on", help="deadline batching: off, on, or both (off,on)")
    p.add_argument(
        "--chunking",
        default="fixed",
        help="fixed, adaptive, fixed@S (first chunks rank at S s), fixed~C (first_company_s C), ...",
    )
    p.add_argument("--solo", default="0/0", help="first passes hold the LLM: N/SHARE (solo_first_pass/_share), ...")
    p.add_argument("--context", type=int, default=100, help="the flow's context in tokens (max_prompt_tokens)")
    p.add_argument("--schedule", type=lambda v: tuple(map(int, v.split(","))), default=SCHEDULE, help="tokens/chunk")
    p.add_argument("--seconds", type=float, default=60.0, help="how long sessions keep sending turns")
    p.add_argument("--turns", type=int, help="turns per session (default: until --seconds)")
    p.add_argument("--max-active", type=int, help="replies at once; the others queue (admission)")
    p.add_argument(
        "--controller",
        action="append",
        default=[],
        help="the limit set by the server's CapacityController instead: 'default' (a GPU server's: ceiling 256, "
        "initial 64) or KEY=VAL,... of its fields and interval_s; repeat to compare policies",
    )
    p.add_argument("--max-wait-s", type=float, help="queued longer is a 429, retried 2 s later (the server: 10)")
    p.add_argument("--seeds", type=int, default=4, help="arrival draws averaged per configuration")
    p.add_argument("--validate", action="store_true", help="also run the GPU-measured scenarios, measured beside")
    p.add_argument("--model", action="append", default=[], help="a cost model field, KEY=VALUE (e.g. slowdown=1.0)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--fit", help="fit the beside-the-LLM pass model to a GPU run's gpu_passes.json, print it, stop")
    args = p.parse_args(argv)
    if args.fit:
        print(json.dumps(fit_passes(args.fit)))
        return
    cost = replace(CostModel(), **{k: _model_value(v) for k, v in (m.split("=", 1) for m in args.model)})
    out: dict = {
        "note": "simulated: a cost model calibrated on an H200, not a GPU measurement",
        "model": asdict(CostModel()),
    }
    if args.validate:
        out["validation"] = []
        for label, kwargs, measured in VALIDATION:
            r = averaged(args.seeds, hold=False, cost=cost, **kwargs)
            out["validation"].append({"scenario": label, "simulated": r, "measured": measured})
            print(_line(f"[validate] {label}", r) + f"\n    measured: {measured}", flush=True)
    out["runs"] = []
    solos = [(int(n), float(sh)) for n, _, sh in (x.partition("/") for x in args.solo.split(","))]
    for n in (int(x) for x in args.streams.split(",")):
        for stagger in (float(x) for x in args.stagger.split(",")):
            for chunking in args.chunking.split(","):
                for hold, spec, solo in (
                    (h == "on", c, so) for h in args.hold.split(",") for c in args.controller or [None] for so in solos
                ):
                    kwargs = {"seconds": args.seconds, "turns": args.turns, "max_active": args.max_active, "cost": cost}
                    kwargs |= {"context": args.context, "max_wait_s": args.max_wait_s, "solo": solo}
                    kwargs["schedule"] = args.schedule
                    r = averaged(
                        args.seeds,
                        streams=n,
                        stagger_s=stagger,
                        hold=hold,
                        adaptive=chunking == "adaptive",
                        first_rank_s=float(chunking.partition("~")[0].partition("@")[2] or -1),
                        first_company_s=float(chunking.partition("~")[2]) if "~" in chunking else None,
                        controller=spec,
                        **kwargs,
                    )
                    r["chunking"], r["controller"], r["solo"] = chunking, spec, solo
                    out["runs"].append(r)
                    policy = f", controller {spec}" if spec else ""
                    policy += f", solo {solo[0]}/{solo[1]:g}" if any(solo) else ""
                    label = f"{n} streams over {stagger:g} s, {chunking}, hold {'on' if hold else 'off'}{policy}"
                    print(_line(label, r), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
