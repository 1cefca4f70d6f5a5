"""Every benchmark of the project, under `opensora bench` and the research scripts of benchmarks/.

step      the timed training step on random inputs (written once) and the timers
reporter  the table on the console and the MLflow run of a benchmark (written once)
model     DiT vs STDiT training throughput            engines   a training step per engine (DDP, FSDP2)
reference ours vs Open-Sora 1.0's own STDiT            data      latent cache vs online encoding
opensora_reference  loads Open-Sora 1.0's STDiT from a checkout

Layer: just under cli; nothing else in opensora_core imports it.
"""
