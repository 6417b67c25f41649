"""Datasets: format readers, `prepare` into a memory-mapped store, batch loading and batch augmentation."""
