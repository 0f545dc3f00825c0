"""Loaders and cache on CIFAR-10 itself (``FASTTRICK_DATA``, set by .ci/run) and on a small synthetic set.

The real set is decoded once per session into a temporary cache (~12 s on 2 cores); every test
that needs it shares that copy. Tests parametrised over ``dataset`` run on both; the real one
skips with a reason when FASTTRICK_DATA is unset.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import numpy as np
import pytest
import torch

from fasttrick.data import PAD, Cifar10, build_loader, dali_import_error, load_cifar10, training_plan
from fasttrick.data.sources import NUM_TEST, NUM_TRAIN

BACKENDS = [
    "torch",
    pytest.param("dali", marks=pytest.mark.skipif(dali_import_error() is not None, reason="DALI not installed")),
]
BATCH = 512


@pytest.fixture(scope="session")
def cifar10_cache(tmp_path_factory) -> tuple[Cifar10, object]:
    if not os.environ.get("FASTTRICK_DATA"):
        pytest.skip("FASTTRICK_DATA is unset: point it at a CIFAR-10 archive or folder (see docs/running.md)")
    cache_dir = tmp_path_factory.mktemp("fasttrick-cache")
    return load_cifar10(cache_dir=cache_dir), cache_dir


@pytest.fixture(scope="session")
def synthetic() -> Cifar10:
    """1 300 train images (2 batches of 512 + 276 dropped), 700 test images, random pixels."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=2000)
    return Cifar10.from_arrays(
        images[:1300], labels[:1300], images[1300:], labels[1300:], [str(i) for i in range(10)], "synthetic"
    )


@pytest.fixture(params=["synthetic", "cifar10"])
def dataset(request) -> Cifar10:
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic")
    return request.getfixturevalue("cifar10_cache")[0]


def with_index_labels(data: Cifar10) -> Cifar10:
    """Labels replaced by sample indices, so a batch's labels say exactly which images it holds."""
    return dataclasses.replace(
        data, train_labels=np.arange(len(data.train_images)), test_labels=np.arange(len(data.test_images))
    )


def nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).float().numpy()


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def test_cache_holds_verified_cifar10_and_loads_fast(cifar10_cache):
    decoded, cache_dir = cifar10_cache
    start = time.perf_counter()
    cached = load_cifar10(cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    assert seconds < 2.0, f"cache load took {seconds:.2f} s"
    assert cached.train_images.shape == (NUM_TRAIN, 32, 32, 3) and cached.test_images.shape == (NUM_TEST, 32, 32, 3)
    assert cached.train_images.dtype == np.uint8 and cached.train_labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(cached.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(cached.test_labels), [1000] * 10)
    assert cached.classes[0] == "airplane" and cached.classes[-1] == "truck"
    assert cached.nbytes == 184_800_000  # held once: 60 000 x 3 072 uint8 + 60 000 int64 labels
    np.testing.assert_array_equal(cached.train_images, decoded.train_images)


def test_corrupt_cache_is_rebuilt(cifar10_cache, tmp_path):
    decoded, cache_dir = cifar10_cache
    [cache_file] = cache_dir.iterdir()
    damaged = tmp_path / cache_file.name
    shutil.copy(cache_file, damaged)
    with open(damaged, "r+b") as f:  # flip one pixel bit in the middle of the training images
        f.seek(damaged.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    rebuilt = load_cifar10(cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.train_images, decoded.train_images)
    assert damaged.read_bytes() == cache_file.read_bytes()


# ---------------------------------------------------------------------------------------------
# Batches: shape, dtype, layout, coverage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("split", ["train", "test"])
def test_batch_shape_dtype_channels_last(backend, dtype, split, synthetic):
    loader = build_loader(split, dataset=synthetic, backend=backend, device="cpu", dtype=dtype, batch_size=256)
    images, labels = next(iter(loader))
    assert images.shape == (256, 3, 32, 32) and images.dtype == dtype and images.device.type == "cpu"
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.shape == (256,) and labels.dtype == torch.int64


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_epoch_sees_each_image_once_bar_the_remainder(backend, dataset):
    loader = build_loader("train", dataset=with_index_labels(dataset), backend=backend, device="cpu", batch_size=BATCH)
    seen = [labels for _, labels in loader]
    n = len(dataset.train_images)
    assert len(seen) == len(loader) == n // BATCH
    assert all(len(batch) == BATCH for batch in seen)
    seen = torch.cat(seen)
    assert len(seen.unique()) == len(seen) == n // BATCH * BATCH  # no repeats, only the remainder is dropped


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_sees_each_test_image_once(backend, dataset):
    loader = build_loader("test", dataset=with_index_labels(dataset), backend=backend, device="cpu", batch_size=BATCH)
    images, labels = zip(*loader, strict=True)
    n = len(dataset.test_images)
    assert [len(b) for b in labels] == [BATCH] * (n // BATCH) + [n % BATCH] and len(loader) == len(labels)
    torch.testing.assert_close(torch.cat(labels), torch.arange(n))
    # No augmentation: each image is its stored pixels, normalised.
    mean, std = np.float32(dataset.mean), np.float32(dataset.std)
    expected = (dataset.test_images[-3:].astype(np.float32) - mean) * (1 / std)
    np.testing.assert_allclose(nhwc(images[-1][-3:]), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Augmentation against a NumPy reference
# ---------------------------------------------------------------------------------------------


def all_augmentations(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(2 flips, 2*PAD+1 dy, 2*PAD+1 dx, 32, 32, 3): every translate-by-(dy, dx) then maybe-flip of ``image``,
    built the textbook way (np.pad with zeros, crop, mirror), independent of the loaders' index math."""
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0))).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32), axis=(0, 1)).transpose(0, 1, 3, 4, 2)
    normalized = (windows - mean) * (1 / std)
    return np.stack([normalized, normalized[:, :, :, ::-1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_matches_numpy_reference(backend, dataset):
    data = with_index_labels(dataset)
    loader = build_loader("train", dataset=data, backend=backend, device="cpu", batch_size=BATCH, seed=7)
    images, indices = next(iter(loader))
    mean, std = np.float32(data.mean), np.float32(data.std)
    plan = training_plan(len(data.train_images), BATCH, seed=7, epoch=0)
    found = []
    for out, index, (dy, dx), flip in zip(nhwc(images[:96]), indices[:96], plan.shifts, plan.flips, strict=False):
        candidates = all_augmentations(data.train_images[index], mean, std)
        # The planned choice reproduces the output, with zero (black) padding where the window leaves the image ...
        np.testing.assert_allclose(out, candidates[flip, dy + PAD, dx + PAD], atol=1e-5)
        # ... and no other reading is needed: some pad-4 translate (+- flip) of the source image matches.
        matches = np.argwhere(np.abs(candidates - out).max(axis=(3, 4, 5)) < 1e-5)
        assert len(matches) >= 1
        found.append((flip, dy, dx))
    flips, dys, dxs = np.array(found).T
    assert set(flips) == {0, 1}
    assert dys.min() == dxs.min() == -PAD and dys.max() == dxs.max() == PAD
    assert np.all(np.abs(plan.shifts) <= PAD)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_is_black_before_normalising(backend, synthetic):
    loader = build_loader("train", dataset=synthetic, backend=backend, device="cpu", batch_size=BATCH, seed=3)
    images = nhwc(next(iter(loader))[0])
    plan = training_plan(len(synthetic.train_images), BATCH, seed=3, epoch=0)
    black = (0 - np.float32(synthetic.mean)) * (1 / np.float32(synthetic.std))
    k = int(np.argmax(plan.shifts[:, 0] == PAD))  # an image moved up by 4: its bottom 4 rows are padding
    np.testing.assert_allclose(images[k, -PAD:], np.broadcast_to(black, (PAD, 32, 3)), atol=1e-6)
    assert not np.allclose(images[k, : 32 - PAD], black)


# ---------------------------------------------------------------------------------------------
# Statistics, determinism, agreement between the backends
# ---------------------------------------------------------------------------------------------


def channel_moments(loader) -> tuple[np.ndarray, np.ndarray]:
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for images, _ in loader:
        pixels = images.double().permute(0, 2, 3, 1).reshape(-1, 3)
        total += pixels.sum(0).numpy()
        total_sq += pixels.square().sum(0).numpy()
        count += len(pixels)
    mean = total / count
    return mean, np.sqrt(total_sq / count - mean**2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalised_per_channel_statistics(backend, dataset):
    # The training images run through the evaluation path: exactly zero mean, unit std per channel.
    as_eval = dataclasses.replace(dataset, test_images=dataset.train_images, test_labels=dataset.train_labels)
    mean, std = channel_moments(build_loader("test", dataset=as_eval, backend=backend, device="cpu"))
    np.testing.assert_allclose(mean, 0, atol=1e-4)
    np.testing.assert_allclose(std, 1, atol=1e-4)
    # Held-out test images, normalised with training statistics: close to, not exactly, (0, 1).
    mean, std = channel_moments(build_loader("test", dataset=dataset, backend=backend, device="cpu"))
    np.testing.assert_allclose(mean, 0, atol=0.05)
    np.testing.assert_allclose(std, 1, atol=0.05)


def first_batches(loader, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for batch in loader:  # leaving the pass early is part of the test: the next pass must start clean
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def assert_same(a, b):
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_epoch_determine_the_batches(backend, synthetic):
    def loader(seed):
        return build_loader("train", dataset=synthetic, backend=backend, device="cpu", batch_size=256, seed=seed)

    run = loader(seed=0)
    epoch0, epoch1 = first_batches(run), first_batches(run)  # each pass advances the epoch
    assert_same(epoch0, first_batches(loader(seed=0)))
    resumed = loader(seed=0)
    resumed.set_epoch(1)
    assert_same(epoch1, first_batches(resumed))
    for other in (epoch1, first_batches(loader(seed=1))):
        assert not torch.equal(epoch0[0][1], other[0][1])
        assert not torch.equal(epoch0[0][0], other[0][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backends_yield_identical_batches(dtype, dataset):
    if dali_import_error() is not None:
        pytest.skip("DALI not installed")
    dali, torch_ = (
        build_loader("train", dataset=dataset, backend=b, device="cpu", dtype=dtype, seed=5) for b in ("dali", "torch")
    )
    for loader in (dali, torch_):
        loader.set_epoch(3)
    # Same plan, same fp32 arithmetic ((x - mean) * (1 / std)), same cast: bit-identical.
    assert_same(first_batches(dali, 2), first_batches(torch_, 2))


def test_backends_agree_in_distribution(synthetic):
    if dali_import_error() is not None:
        pytest.skip("DALI not installed")
    # Different seeds: different batches, but the same augmented distribution (over 2 x 1 024 images).
    moments = [
        channel_moments(build_loader("train", dataset=synthetic, backend=b, device="cpu", seed=s))
        for b, s in (("dali", 1), ("torch", 2))
    ]
    np.testing.assert_allclose(moments[0][0], moments[1][0], atol=0.03)
    np.testing.assert_allclose(moments[0][1], moments[1][1], atol=0.03)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_batches_match_cpu(backend, synthetic):
    for split in ("train", "test"):
        cpu, gpu = (
            build_loader(split, dataset=synthetic, backend=backend, device=d, dtype=torch.bfloat16, seed=2)
            for d in ("cpu", "cuda")
        )
        [(x_gpu, y_gpu)] = first_batches(gpu, 1)
        assert x_gpu.device.type == y_gpu.device.type == "cuda"
        assert x_gpu.is_contiguous(memory_format=torch.channels_last)
        assert_same(first_batches(cpu, 1), [(x_gpu.cpu(), y_gpu.cpu())])
