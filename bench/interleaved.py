"""Time a candidate against its lower bound in interleaved pairs: each round runs one, then the
other, back to back, so that load drifting on a shared machine cancels in each pair's ratio."""
import time


def interleaved_ratios(benchmark, candidate, bound, rounds):
    """Run ``rounds`` timed pairs (after one warm-up pair) and return the sorted per-pair ratios
    candidate time / bound time; pytest-benchmark records the time of whole pairs."""
    ratios = []

    def pair():
        start = time.perf_counter()
        candidate()
        middle = time.perf_counter()
        bound()
        ratios.append((middle - start) / (time.perf_counter() - middle))

    benchmark.pedantic(pair, rounds=rounds, iterations=1, warmup_rounds=1)
    return sorted(ratios[1:])  # the first pair is the warm-up round
