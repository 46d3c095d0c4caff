"""Config groups of the simulator: hardware roofline and simulation settings.

``hardware`` describes one accelerator (one tensor-parallel rank) plus the links between
ranks; presets live in ``conf/hardware/*.yaml``. Rates are *peak* datasheet numbers; the
``*_efficiency`` factors say which fraction of them kernels reach.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
    driver_blocks_on_stage0: bool = True  # rank 0 computes stage 0 inside submit (as the runtime does)
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
