"""Entry point of the profiler's helper processes (see :mod:`.workers`)."""
from __future__ import annotations

import json
import sys

from .corunners import corunner_main
from .link import link_worker
from .p2p import p2p_worker


def main(args: list[str]) -> None:
    if len(args) == 3 and args[0] == "p2p-worker":
        a = json.loads(args[2])
        print(json.dumps(p2p_worker(int(args[1]), a["init_file"], a["sizes"], a["repeats"])))
    elif len(args) == 3 and args[0] == "link-worker":
        res = link_worker(int(args[1]), json.loads(args[2]))
        if res is not None:
            print(json.dumps(res))
    elif len(args) == 2 and args[0] == "corunner":
        corunner_main(json.loads(args[1]))
    else:
        sys.exit("usage: python -m pp_sarathi.sim.profile p2p-worker RANK JSON | link-worker RANK JSON "
                 "| corunner JSON")


if __name__ == "__main__":
    main(sys.argv[1:])
