"""Helpers shared by py_start.py and py_guard.py. Standard library only."""

import argparse
import sys


def quantile(sorted_vals, q):
    """The q-quantile, interpolated linearly between ranks (as the C side)."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    if lo + 1 >= len(sorted_vals):
        return sorted_vals[-1]
    frac = pos - lo
    return sorted_vals[lo] + frac * (sorted_vals[lo + 1] - sorted_vals[lo])


def positive_int(s):
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} is not a positive integer")
    return v


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # status 1 like every other error, not 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(1)


def print_quantiles(unit, sorted_vals, n):
    """The result line: median_<unit>=... p10_<unit>=... p90_<unit>=... n=<n>."""
    print(
        f"median_{unit}={quantile(sorted_vals, 0.5):.3f} "
        f"p10_{unit}={quantile(sorted_vals, 0.1):.3f} "
        f"p90_{unit}={quantile(sorted_vals, 0.9):.3f} n={n}",
        flush=True,
    )
