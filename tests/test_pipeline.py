import numpy as np

from jaxfold.data.pipeline import augment, eval_batches, normalize, prefetch, train_batches


def _data(n=50):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def test_train_batches_deterministic_per_seed_and_epoch():
    x, y = _data()
    kw = dict(mean=(0.5,), std=(0.25,), crop_padding=2, hflip=True)
    a = list(train_batches(x, y, 16, seed=0, epoch=0, **kw))
    b = list(train_batches(x, y, 16, seed=0, epoch=0, **kw))
    c = list(train_batches(x, y, 16, seed=0, epoch=1, **kw))
    d = list(train_batches(x, y, 16, seed=1, epoch=0, **kw))
    assert len(a) == 3  # 50 // 16, last partial batch dropped
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0]) and not np.array_equal(a[0][0], d[0][0])
    assert a[0][0].dtype == np.float32 and a[0][0].shape == (16, 8, 8, 1)


def test_augment_is_crop_of_padded_and_flip():
    x, _ = _data(20)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(augment(x, rng, 0, False), x)
    out = augment(x, np.random.default_rng(5), 2, False)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(len(x)):  # each output is some 8×8 window of its padded input
        windows = [padded[i, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        assert any(np.array_equal(out[i], w) for w in windows)
    flipped = augment(x, np.random.default_rng(1), 0, True)
    for i in range(len(x)):
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
    assert any(not np.array_equal(flipped[i], x[i]) for i in range(len(x)))


def test_normalize():
    x = np.array([[[[0], [255]]]], np.uint8)
    np.testing.assert_allclose(normalize(x, (0.5,), (0.5,)).ravel(), [-1.0, 1.0])


def test_eval_batches_cover_everything_once():
    x, y = _data(23)
    batches = list(eval_batches(x, y, 10, mean=(0.0,), std=(1.0,)))
    assert [b[0].shape[0] for b in batches] == [10, 10, 10]
    mask = np.concatenate([b[2] for b in batches])
    assert mask.sum() == 23 and mask[23:].sum() == 0
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[:23], y)


def test_prefetch_preserves_order_and_errors():
    assert [int(v) for v in prefetch(iter(range(5)))] == list(range(5))

    def bad():
        yield 1
        raise RuntimeError("boom")

    it = prefetch(bad())
    assert int(next(it)) == 1
    try:
        next(it)
    except RuntimeError as e:
        assert "boom" in str(e)
    else:
        raise AssertionError("error not propagated")
