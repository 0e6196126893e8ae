"""`python -m pea_kd_bench` (make bench): run the benchmarks in turn; arguments go to the throughput benchmark.
The scale benchmark runs at 4k and 400k examples (`python -m pea_kd bench-scale --examples N` for other sizes)."""
from pea_kd.cli import main as pea_kd_main

from .throughput import main

main()
pea_kd_main(["bench-scale", "--examples", "4000", "--examples", "400000"])
