"""Bounded memory: splits too large for `--max-memory` are streamed from a chunked Zarr store.

- `budget`: parse `--max-memory`, its default, and which splits fit it (resident) or stream.
- `store`: the on-disk layout (one image per chunk inside shards), MedMNIST .npz converted into
  it once, and a fast reader of its rows in any order.
- `source`: what the training step and `predict` read batches from: the resident split on the
  device, or rows read from the store in the given order by a background prefetching thread.
- `load`: `load_dataset`'s budgeted path, which puts these together per split.

Both paths hand the model the same uint8 batches in the same order, so a seed gives the same
result bit for bit whichever path a split takes.
"""
