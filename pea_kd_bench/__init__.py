"""pea-kd's benchmarks, kept apart from the packages that teach (bert_mini: the model; pea_kd: the method).

    python -m pea_kd_bench               what `make bench` runs: every benchmark below but the profile, in turn
    python -m pea_kd_bench.throughput    bert_mini's training and inference speed and memory next to Hugging Face's
                                         BERT and next to this machine's matmul ceiling
    python -m pea_kd_bench.step_profile  where a Trainer step's time goes (torch.profiler shares: matrix products,
                                         dropout masks, GELU, ...), on real GLUE batches
    python -m pea_kd_bench.scale         how features, teacher cache, trainer build, step time
                                         and memory grow with the number of training examples

They import bert_mini and pea_kd; neither package imports them.
"""
