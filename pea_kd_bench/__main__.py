"""`python -m pea_kd_bench` (make bench): run the benchmarks; arguments go to the throughput benchmark."""
from .throughput import main

main()
