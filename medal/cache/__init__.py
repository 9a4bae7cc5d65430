"""The teacher cache: a Zarr store per (dataset, teacher, weights, image size), resumable writes, checksummed reads, verify."""
