"""One rank of a parallel model run (torchrun starts it), optionally with a planted bug:
the tests watch the logit comparison go red with it.

    --plant swap-experts   each rank loads the other ranks' experts (the dispatch still routes by id)
    --plant drop-allreduce the tensor-parallel partial sums are never added up
"""
import sys

from dsport.core.model import parallel
from dsport.core.model.launch import main


def plant(bug: str) -> None:
    if bug == "swap-experts":
        def experts(self, cfg):
            n = cfg.n_routed_experts // self.ep
            r = self.ep - 1 - self.ep_rank
            return range(r * n, (r + 1) * n)
        parallel.Layout.experts = experts
    elif bug == "drop-allreduce":
        parallel.Communicator.all_reduce = lambda self, x, kind="tp": x
    else:
        raise SystemExit(f"unknown planted bug {bug!r}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--plant" in argv:
        i = argv.index("--plant")
        plant(argv[i + 1])
        del argv[i:i + 2]
    sys.exit(main(argv))
