"""Typed configuration: one dataclass per config group, composed by hydra in the CLI layer.

The core reads these plain dataclasses only; hydra/omegaconf stay in ``pp_sarathi.cli``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional



@dataclass
class ModelConfig:
    name: str = "default"  # preset name (default, tiny, llama-13b, ...)
    path: Optional[str] = None  # HF checkpoint dir; unset = generate this preset's random-init checkpoint
    dtype: str = "float32"  # float32, bfloat16 or float16
    # Shape of the generated random-init checkpoint (ignored when `path` is set).
    vocab_size: int = 8192
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_layers: int = 8
    num_heads: int = 16
    num_kv_heads: int = 4
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    seed: int = 0  # seed of the random init


@dataclass
class SchedulerConfig:
    name: str = "sarathi"  # orca, vllm, ft, sarathi, sarathi_serve, sarathi_uniform
    chunk_size: int = 128  # token budget of a batch / prefill chunk size (sarathi, sarathi_serve, vllm)
    # Max requests over all in-flight micro-batches. 28 = 14 per micro-batch at pp=2, so that the
    # default P:D 10 sits at chunk/(B-1) = 128/13 like the paper's pipeline setting (256/26).
    max_batch_size: int = 28
    tile_size: int = 1  # sarathi, sarathi_uniform: round chunk + decodes down to a multiple of this (128 on GPUs)
    # sarathi_uniform: fixed target stage time per micro-batch in ms; unset = chosen online from
    # the running decodes and the waiting prompts.
    target_ms: Optional[float] = None


@dataclass
class CacheConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int = 0  # KV blocks per stage; 0 = enough for max_batch_size full-context requests


@dataclass
class WorkloadConfig:
    name: str = "synthetic"  # jsonl, synthetic or trace
    path: Optional[str] = None  # input file for jsonl and trace
    num_requests: int = 64  # synthetic: how many requests; trace: how many rows to read (0 = all)
    pd_ratio: float = 10.0  # synthetic: prefill tokens / decode tokens of each request
    length_dist: str = "zipf"  # synthetic: total request length distribution: fixed, uniform, zipf
    zipf_theta: float = 0.4  # synthetic: Zipf skew
    min_len: int = 128  # synthetic: shortest request (prompt + output tokens)
    max_len: int = 512  # synthetic: longest request (prompt + output tokens)
    arrival: str = "static"  # static (all at t=0), poisson or gamma
    qps: float = 1.0  # poisson/gamma: mean arrival rate
    gamma_cv: float = 2.0  # gamma: coefficient of variation of inter-arrival times
    max_tokens: int = 16  # jsonl: output length for lines without max_tokens
    seed: int = 0  # synthetic/trace: seed for lengths, arrivals and prompt token ids
    offset: int = 0  # trace: skip this many rows first (num_requests rows are read after them; 0 = all)
    time_scale: float = 1.0  # trace: arrival times (rebased to the first request read) multiplied by this; 0 = all at once
    clip_to_context: bool = True  # trace: shorten prompt + output to fit the model's context


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0  # per-request generators derive from this
    ignore_eos: bool = False
    logprobs: int = 0  # top-k logprobs per generated token; 0 = off


@dataclass
class ParallelConfig:
    pp: int = 2  # pipeline stages
    backend: str = "auto"  # auto, gloo or nccl
    partition: Any = "uniform"  # uniform, balanced, or a list of layer counts per stage
    timeout_s: float = 60.0  # a stage silent this long (or a dead peer) ends the run
    threads_per_stage: int = 0  # CPU threads per stage; 0 = cores / local stages
    keep_freed_memory: bool = True  # glibc: freed host memory stays in the process (no page faults re-touching it next step)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline, online or disabled
    project: str = "pp_sarathi"
    group: Optional[str] = None
    name: Optional[str] = None


@dataclass
class LoggingConfig:
    level: str = "INFO"
    progress: bool = True  # progress bar on rank 0
    trace: bool = True  # write trace.json
    timeline: bool = True  # write timeline.png
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CompareConfig:
    schedulers: List[str] = field(default_factory=lambda: ["orca", "sarathi", "sarathi_uniform"])
    baseline: str = "orca"  # ratios are taken against this one


@dataclass
class MicrobenchConfig:
    chunk_sizes: List[int] = field(default_factory=lambda: [128, 256])
    decode_batch_sizes: List[int] = field(default_factory=lambda: [4, 16, 32])
    context_len: int = 256  # KV length each decode attends to
    warmup: int = 2
    repeats: int = 7

# --- Simulator groups: hardware roofline and simulation settings. ``hardware`` describes one
# accelerator (one tensor-parallel rank) plus the links between ranks; presets live in
# conf/hardware/*.yaml. Rates are peak datasheet numbers; *_efficiency says which fraction
# of them kernels reach.


@dataclass
class HardwareConfig:
    name: str = "cpu"  # preset name (a100-80gb, a6000, h100, h200, cpu)
    peak_tflops: float = 0.15  # dense matmul peak per device in the model dtype, TFLOP/s
    mem_bw_gbps: float = 20.0  # device memory bandwidth, GB/s
    memory_gb: float = 16.0  # device memory (for the KV capacity check)
    flops_efficiency: float = 0.7  # fraction of peak_tflops GEMMs / attention reach
    mem_efficiency: float = 0.8  # fraction of mem_bw_gbps streaming kernels reach
    gemm_tile: int = 1  # GEMM token-dimension tile: FLOPs are paid for ceil(T/tile)*tile rows (128 on GPUs)
    kernel_overhead_us: float = 0.0  # fixed cost per kernel launch
    batch_overhead_us: float = 0.0  # fixed cost per micro-batch per stage (scheduling, metadata)
    tp: int = 1  # tensor-parallel degree inside a stage (divides GEMM/attention work, adds all-reduces)
    tp_allreduce_bw_gbps: float = 100.0  # all-reduce bus bandwidth per rank, GB/s (ring: 2(tp-1)/tp * bytes / bw)
    tp_allreduce_latency_us: float = 10.0  # per all-reduce
    pp_link_bw_gbps: float = 10.0  # stage-to-stage bandwidth per TP rank, GB/s
    pp_link_latency_us: float = 10.0  # per point-to-point message
    pp_scatter_gather: bool = True  # each TP rank sends 1/tp of the activations (Megatron-style)


@dataclass
class SimConfig:
    profile: Optional[str] = None  # profile CSV (from `profile`); unset = roofline from `hardware`
    profile_statistic: str = "median"  # per point: median of the timed calls (robust to a burst of load), mean or min
    compare: bool = False  # simulate every scheduler of compare.schedulers and write compare.json
    trace_max_batches: int = 400  # trace.json / timeline.* show the first N micro-batches (0 = all)
    driver_blocks_on_stage0: bool = False  # the driver waits for stage 0 to finish each micro-batch (the runtime before stage 0 got its own thread)
    schedule_overhead_us: float = 0.0  # virtual time charged for each scheduler call that yields a batch
    jitter: float = -1.0  # sd of ln(stage compute time) from step to step; -1 = the profile's measurement (roofline: 0)
    seed: int = 0  # of the jitter draws
    time_share_iterations: int = 4  # CPU profile, more stage threads than cores: re-simulations with the cores shared (0 = off)
    dummy_token_id: int = -1  # token every simulated sample returns; -1 = first id that is not EOS
    progress_every: int = 0  # log progress every N finished requests (0 = off)
    validate_against: Optional[str] = None  # a real run/compare dir: simulate its config, write fidelity.json
    # Profiling (`profile` command)
    profile_threads: int = 0  # torch threads while profiling; 0 = cores / parallel.pp (as a stage gets)
    profile_max_tokens: int = 4096  # largest token count of the linear-op sweep (counts above 1024: one round)
    profile_max_context: int = 2048  # largest KV length of the attention sweeps (capped by the model)
    profile_repeats: int = 3  # rounds over the whole sweep; each round times 1 call, or ~10 ms of calls
    profile_p2p: bool = True  # measure gloo send/recv between two local processes
    profile_corunners: int = -1  # processes running the same measurement meanwhile (the other stages of a pipeline on this host); -1 = pp - 1 on CPU


@dataclass
class RunConfig:
    command: str = "run"  # set by the CLI: run, compare, microbench, profile, simulate
    device: str = "auto"  # auto (cuda if present), cpu or cuda
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
    output_dir: str = "."  # filled with hydra.run.dir by the CLI
