"""Wall time and accuracy of a five-layer linear probe, for a run and for the random floor,
through the real command line.

    python benchmarks/probe_layers.py runs/simclr-ti --data ../shared/data/tiny-imagenet-10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def probe(model: str, data: str, layers: str) -> dict:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "sslcli", "probe", model, "--data", data, "--layers", layers, "--json"],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"sslcli probe {model} failed with exit code {done.returncode}")
    result = json.loads(done.stdout)
    result["wall_s"] = round(time.time() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--layers", default="all")
    parser.add_argument("--floor", default="random:resnet18")
    args = parser.parse_args()
    ours, floor = probe(args.model, args.data, args.layers), probe(args.floor, args.data, args.layers)
    rows = [{"layer": a["layer"], "top1": a["top1"], "floor_top1": b["top1"], "gain": round(a["top1"] - b["top1"], 4)}
            for a, b in zip(ours["layers"], floor["layers"])]
    print(json.dumps({"model": args.model, "floor": args.floor, "wall_s": ours["wall_s"],
                      "floor_wall_s": floor["wall_s"], "layers": rows}))


if __name__ == "__main__":
    main()
