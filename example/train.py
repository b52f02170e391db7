"""The example experiment: logistic regression on a synthetic task, stdlib only.

Reads its configuration from $EXPMAN_CONFIG, writes TensorBoard scalars under
$EXPMAN_OUTPUT_DIR/tb and its final numbers to $EXPMAN_OUTPUT_DIR/results.json.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tbwriter import ScalarWriter  # noqa: E402


def make_data(rng: random.Random, n: int, dim: int) -> list[tuple[list[float], int]]:
    true_w = [rng.gauss(0, 1) for _ in range(dim)]
    data = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(dim)]
        data.append((x, int(sum(a * b for a, b in zip(true_w, x, strict=False)) + rng.gauss(0, 0.5) > 0)))
    return data


def predict(w: list[float], x: list[float]) -> float:
    z = sum(a * b for a, b in zip(w, x, strict=False))
    return 1 / (1 + math.exp(-max(min(z, 30), -30)))


def main() -> None:
    config = json.load(open(os.environ["EXPMAN_CONFIG"]))
    output = os.environ["EXPMAN_OUTPUT_DIR"]
    train, model = config["train"], config["model"]
    rng = random.Random(train["train_seed"])
    data = make_data(rng, 600, model["features"])
    train_set, test_set = data[:500], data[500:]
    w = [0.0] * model["features"]
    writer = ScalarWriter(os.path.join(output, "tb"))
    for step in range(1, train["steps"] + 1):
        x, y = rng.choice(train_set)
        error = predict(w, x) - y
        w = [wi - train["learning_rate"] * error * xi for wi, xi in zip(w, x, strict=False)]
        if step % 10 == 0:
            loss = -sum(math.log(max(1e-9, p if y else 1 - p)) for x, y in train_set for p in [predict(w, x)]) / len(
                train_set
            )
            writer.add_scalar("train/loss", loss, step)
            print(f"step {step}: loss {loss:.4f}")
    accuracy = sum((predict(w, x) > 0.5) == bool(y) for x, y in test_set) / len(test_set)
    writer.add_scalar("eval/accuracy", accuracy, train["steps"])
    writer.close()
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump({"eval": {"accuracy": accuracy}, "train": {"final_loss": loss}}, f, indent=2)
    print(f"Test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
