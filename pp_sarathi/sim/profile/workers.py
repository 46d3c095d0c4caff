"""The profiler's helper processes: plain ``python -m pp_sarathi.sim.profile KIND ...``
subprocesses (so this works whatever the caller's main module is), dispatched by
``__main__.py``.

    KIND RANK JSON    one rank of a measurement (``p2p-worker``, ``link-worker``); rank 0 prints
                      its result as JSON on its last stdout line
    corunner JSON     a co-running stage (:mod:`.corunners`)
"""
from __future__ import annotations

import json
import subprocess
import sys

MODULE = "pp_sarathi.sim.profile"


def run_workers(kind: str, world: int, arg: dict, timeout_s: float):
    """Run ``world`` ``python -m pp_sarathi.sim.profile KIND RANK ARG`` processes; returns the
    JSON of rank 0's last output line."""
    procs = [subprocess.Popen([sys.executable, "-m", MODULE, kind, str(r), json.dumps(arg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout_s)
            if p.returncode != 0:
                raise RuntimeError(f"{kind} failed: {err.strip()[-500:]}")
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return json.loads(outs[0].strip().splitlines()[-1])
