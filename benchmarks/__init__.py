"""Throughput benchmark: this project's JAX train step and encoder against PyTorch `transformers`.

`python -m benchmarks [flags]` times, in one process on one machine, the same work twice:

* **Train step**: the multitask step of this project (`train.step.make_train_step` around
  `MultitaskBert`, a one-device mesh: forward over every sentence of the step, SST cross-entropy +
  paraphrase BCE-with-logits + STS MSE summed, backward, AdamW) against the same step written with
  `transformers.BertModel` + the same heads (SST linear 5, paraphrase [|u-v|, u*v] -> dense -> ReLU
  -> dense, STS 5 * cosine, masked mean pooling, dropout 0.1) and `torch.optim.AdamW(lr=1e-5)`,
  eager and (`--torch-compile`) `torch.compile`d. Both get identical weights (the JAX parameters
  copied into PyTorch) and the same examples. A step holds B examples per task: B SST
  sentences, 2B paraphrase and 2B STS sentences. By default the examples are real: one epoch of
  the real input pipeline (`train.input_pipeline`, laid out as training lays it out) is planned
  and `--sample-steps` steps spread over it are timed; the step time is their mean. JAX gets the
  step as training builds it (`--layout packed`: sentences packed into rows; `--layout padded`:
  all padded to the step's bucket). PyTorch gets what its users write (`--torch-padding
  per-call`: five encoder calls, SST and each side of the pairs, each padded to its longest
  sentence as `tokenizer(batch, padding=True)` does), or JAX's own padded tensors in one call
  (`--torch-padding same`, with `--layout padded`: identical work, a pure framework comparison).
  `--seq-len T` times one batch of full-length T-token sentences instead (no padding anywhere).
* **Encoding** (forward + mean pooling, no gradients) of the 2 x 863 STS dev sentences: this
  project the way it evaluates (length-sorted batches padded to the bucket lengths, jit-compiled
  once per bucket) against PyTorch with what users get from `tokenizer(batch, padding=True)` per
  batch of the same size in file order, under `torch.inference_mode`. PyTorch on the project's
  sorted, bucketed batches is timed too, to split the gain into padding and framework.

Times are medians over `--repeats` after `--warmup` passes; the frameworks alternate within each
repeat, so background load hits both alike. Compilation is reported apart. Ratios:
`*_ratio_vs_torch_*` for step times is JAX time / PyTorch time (below 1: JAX faster), for
throughputs JAX throughput / PyTorch throughput (above 1: JAX faster); `speedup` holds
PyTorch time / JAX time for every comparison (above 1: JAX faster).

Model FLOPs are analytic: training 6 x non-embedding parameters x padded tokens + 12 x layers x
sequences x T^2 x hidden (attention scores and values); inference a third of that. Model FLOP
utilisation needs the device's peak (`PEAK_FLOPS`, GPUs and TPUs); it is "n/a" on CPU.

PyTorch and `transformers` are optional dependencies (`pip install -e '.[torch]'`): `--no-torch`
times JAX alone without them.

Modules, one job each:

- `workload`: what is timed: the JAX model, the training data, the planned epoch and its steps;
- `flops`: analytic model FLOPs, parameter counts, device peaks;
- `timing`: the timers: the JAX train step and encoder, alternating with the PyTorch reference;
- `profiling`: where a JAX step's time goes (jax.profiler);
- `torch_reference`: the PyTorch side (model, weights copied from JAX, its step and encoder);
- `report`: the machine, the printed report, the JSON and the sweep plot;
- `cli`: the flags and `main`.
"""
