"""Input pipeline: deterministic shuffling/augmentation per (seed, epoch), normalisation, device prefetch.

Augmentation runs vectorised in numpy on a background thread, overlapping the jitted step on the device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxfold.errors import UserError


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 NHWC → float32, per-channel standardised."""
    x = images.astype(np.float32) * (1.0 / 255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def augment(images: np.ndarray, rng: np.random.Generator, crop_padding: int, hflip: bool) -> np.ndarray:
    """Random crop after zero padding (in pixel space, like torchvision) and optional horizontal flip."""
    n, h, w, _ = images.shape
    if crop_padding > 0:
        p = crop_padding
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        oy = rng.integers(0, 2 * p + 1, n)
        ox = rng.integers(0, 2 * p + 1, n)
        rows = oy[:, None] + np.arange(h)[None, :]
        cols = ox[:, None] + np.arange(w)[None, :]
        images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if hflip:
        flip = rng.random(n) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    return images


def train_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int, epoch: int,
                  mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0,
                  hflip: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled, augmented, normalised full batches (the last partial batch is dropped)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(images))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = np.sort(order[start:start + batch_size])  # sorted gathers are cache-friendlier; order is random anyway
        x = augment(images[idx], rng, crop_padding, hflip)
        yield normalize(x, mean, std), labels[idx]


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every example once, in order, as fixed-shape batches ``(x, y, mask)``; padding rows have mask 0.

    Fixed shapes mean the jitted evaluator compiles once, whatever the dataset size.
    """
    n = len(images)
    for start in range(0, n, batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        mask = np.ones(len(x), np.float32)
        if len(x) < batch_size:
            pad = batch_size - len(x)
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        yield normalize(x, mean, std), y, mask


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Produce items on a background thread and move them to the default device ahead of use."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for item in iterator:
                q.put(jax.device_put(item))
        except BaseException as e:  # re-raised in the consumer
            errors.append(e)
        finally:
            q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := q.get()) is not done:
        yield item
    if errors:
        raise errors[0]


def subset_batches(dataset: Any, examples: int, batch_size: int = 500,
                   seed: int = 0) -> Callable[[], Iterator[np.ndarray]]:
    """A function yielding a fixed random subset of ``examples`` training images (no augmentation), normalised,
    in batches: the data REPAIR recomputes statistics from (the same images on every call)."""
    if examples < 1 or batch_size < 1:
        raise UserError(f"repair needs examples ≥ 1 and batch_size ≥ 1, got {examples}, {batch_size}")
    n = len(dataset.train_images)
    index = np.sort(np.random.default_rng(seed).permutation(n)[: min(examples, n)])

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(index), batch_size):
            part = dataset.train_images[index[start:start + batch_size]]
            yield normalize(part, dataset.mean, dataset.std)

    return batches
