"""CIFAR reading and device-side augmentation, on synthetic folders in the real pickle layout."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.config import make_config
from trainers.data import build_data
from trainers.data.augment import CIFAR_MEAN, CIFAR_STD, Normalizer, crop_flip
from trainers.data.cifar import CifarData
from trainers.data.synthetic import write_synthetic_cifar
from trainers.errors import UserError

CPU = torch.device("cpu")
MEAN = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    write_synthetic_cifar(root, classes=10, n_train=600, n_test=250, seed=1)
    return root


@pytest.fixture(scope="module")
def c100(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    write_synthetic_cifar(root, classes=100, n_train=300, n_test=130, seed=2)
    return root


def _pickle(path, encoding="bytes"):
    with open(path, "rb") as f:
        return pickle.load(f, encoding=encoding)


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo normalization: back to the 0..255 integers the files hold."""
    return ((images * STD + MEAN) * 255).round().to(torch.int64)


def test_cifar10_read_back_counts_labels_and_pixels(c10):
    cfg = make_config("cifar10", str(c10), batch_size=128, seed=0, workers=0)
    data = build_data(cfg, CPU)
    assert (data.num_classes, data.input_size) == (10, 32)
    assert data.train_len == 600 // 128 == 4
    assert data.val_images == 250
    test = _pickle(c10 / "cifar-10-batches-py" / "test_batch")
    want = torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32).astype(np.int64))
    batches = list(data.val_batches())
    assert [x.shape[0] for x, _ in batches] == [128, 122]     # last partial batch kept
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == test[b"labels"]                 # file order, no shuffle
    assert torch.equal(_to_pixels(images), want)              # RGB planes, no augmentation
    train = list(data.train_batches(0))
    assert len(train) == 4 and all(x.shape == (128, 3, 32, 32) for x, _ in train)  # drop_last
    counts = torch.bincount(torch.cat([y for _, y in train]), minlength=10)
    assert counts.sum() == 512 and counts.min() > 30          # balanced classes


def test_val_batches_do_not_depend_on_batch_size(c10):
    big = build_data(make_config("cifar10", str(c10), batch_size=128, workers=0), CPU)
    small = build_data(make_config("cifar10", str(c10), batch_size=8, workers=0), CPU)
    batches = list(small.val_batches())
    assert [x.shape[0] for x, _ in batches] == [8] * 31 + [2]
    assert torch.equal(torch.cat([x for x, _ in batches]),
                       torch.cat([x for x, _ in big.val_batches()]))
    assert torch.equal(torch.cat([y for _, y in batches]),
                       torch.cat([y for _, y in big.val_batches()]))


def test_cifar100_read_back(c100):
    cfg = make_config("cifar100", str(c100), batch_size=64, seed=0, workers=0)
    data = build_data(cfg, CPU)
    assert (data.num_classes, data.train_len, data.val_images) == (100, 4, 130)
    test = _pickle(c100 / "cifar-100-python" / "test")
    labels = torch.cat([y for _, y in data.val_batches()])
    assert labels.tolist() == test[b"fine_labels"]
    assert test[b"coarse_labels"] == [f // 5 for f in test[b"fine_labels"]]
    meta = _pickle(c100 / "cifar-100-python" / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20


def test_synthetic_files_match_the_documented_layout(c10):
    folder = c10 / "cifar-10-batches-py"
    sizes = []
    for i in range(1, 6):
        entry = _pickle(folder / f"data_batch_{i}")             # the dataset's own recipe
        assert set(entry) == {b"batch_label", b"data", b"filenames", b"labels"}
        assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape[1] == 3072
        assert len(entry[b"labels"]) == entry[b"data"].shape[0]
        sizes.append(entry[b"data"].shape[0])
    assert sizes == [120] * 5
    # Python 2 str, as in the real files: str keys when read the way torchvision reads.
    assert "data" in _pickle(folder / "test_batch", encoding="latin1")
    assert _pickle(folder / "batches.meta")[b"label_names"][0] == b"airplane"


@pytest.mark.parametrize("classes", [10, 100])
def test_torchvision_reads_synthetic_folder_once_md5_check_is_skipped(c10, c100, monkeypatch,
                                                                      classes):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tvcifar

    root, cls = (c10, tvd.CIFAR10) if classes == 10 else (c100, tvd.CIFAR100)
    # torchvision checks the md5 of the real files, so it refuses any other content...
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        cls(str(root), train=False, download=False)
    # ...but its reader accepts our bytes, and sees what build_data sees.
    monkeypatch.setattr(tvcifar, "check_integrity", lambda *a, **k: True)
    tv = cls(str(root), train=False, download=False)
    data = build_data(make_config(f"cifar{classes}", str(root), batch_size=50, workers=0), CPU)
    images = torch.cat([x for x, _ in data.val_batches()])
    labels = torch.cat([y for _, y in data.val_batches()])
    assert tv.targets == labels.tolist()
    assert torch.equal(torch.from_numpy(tv.data.astype(np.int64)).permute(0, 3, 1, 2),
                       _to_pixels(images))
    assert len(tv.classes) == classes


def test_normalization_constants_and_black_padding():
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    zero = torch.zeros(1, dtype=torch.int64)
    # Offset (dy, dx) = (0, 0) in the padded image = shift by 4 down and right.
    out = Normalizer(CIFAR_MEAN, CIFAR_STD, CPU)(crop_flip(white, zero, zero,
                                                           torch.zeros(1, dtype=torch.bool)))
    black = torch.tensor([(0 - m) / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)])
    bright = torch.tensor([(1 - m) / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)])
    assert black[0].item() == pytest.approx(-0.4914 / 0.2470, abs=1e-6)
    assert bright[2].item() == pytest.approx((1 - 0.4465) / 0.2616, abs=1e-6)
    border = torch.zeros(32, 32, dtype=torch.bool)
    border[:4, :] = True
    border[:, :4] = True
    for c in range(3):
        assert torch.allclose(out[0, c][border], black[c].expand(int(border.sum())), atol=1e-5)
        assert torch.allclose(out[0, c][~border], bright[c].expand(int((~border).sum())),
                              atol=1e-5)


def _reference_crop(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Pixel (i, j) of the crop is source pixel (i + dy - 4, j + dx - 4), or 0 outside."""
    out = torch.zeros_like(image)
    for i in range(32):
        for j in range(32):
            si, sj = i + dy - 4, j + dx - 4
            if 0 <= si < 32 and 0 <= sj < 32:
                out[:, i, j] = image[:, si, sj]
    return out


def test_crop_is_a_shift_within_four_pixels_and_flip_mirrors():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    dy = torch.tensor([0, 8, 4, 2])
    dx = torch.tensor([8, 0, 4, 7])
    plain = crop_flip(images, dx, dy, torch.zeros(4, dtype=torch.bool))
    for k in range(4):
        assert torch.equal(plain[k], _reference_crop(images[k], int(dy[k]), int(dx[k])))
    assert torch.equal(plain[2], images[2])                   # offset 4 = no shift
    mirrored = crop_flip(images, dx, dy, torch.ones(4, dtype=torch.bool))
    assert torch.equal(mirrored, plain.flip(-1))


def _coded_data(n: int, batch_size: int = 32) -> CifarData:
    """Images that say where each pixel came from: channel 0 = image id, 1 = row, 2 = column."""
    ids = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 32, 32)
    rows = (10 + 6 * torch.arange(32, dtype=torch.uint8)).view(1, 32, 1).expand(n, 32, 32)
    cols = (10 + 6 * torch.arange(32, dtype=torch.uint8)).view(1, 1, 32).expand(n, 32, 32)
    images = torch.stack([ids, rows, cols], dim=1).contiguous().numpy()
    labels = (np.arange(n) % 10).astype(np.int64)
    return CifarData((images, labels), (images[:10], labels[:10]), 10, batch_size, seed=5,
                     device=CPU)


@pytest.mark.parametrize("batch_size", [32, 7])             # 7: several augmentation chunks
def test_training_epoch_is_a_permutation_of_shifted_flipped_images(batch_size):
    data = _coded_data(200, batch_size)
    used = 200 // batch_size * batch_size                       # last partial batch dropped
    assert data.train_len * batch_size == used
    seen, shifts, flips = [], set(), 0
    for images, labels in data.train_batches(0):
        assert images.shape[0] == labels.shape[0] == batch_size
        px = _to_pixels(images)
        for img, label in zip(px, labels):
            centre = img[:, 12:20, 12:20]                       # inside the image for any shift
            source = int(centre[0, 0, 0])
            assert (centre[0] == source).all() and label == source % 10
            seen.append(source)
            row0 = (int(centre[1, 0, 0]) - 10) // 6 - 12       # source row of crop row 12
            col_step = int(centre[2, 0, 1]) - int(centre[2, 0, 0])
            col0 = (int(centre[2, 0, 0]) - 10) // 6 - 12
            flipped = col_step < 0
            flips += flipped
            if flipped:                                         # crop col 12 = mirrored 19
                col0 = (int(centre[2, 0, 7]) - 10) // 6 - 12
            assert -4 <= row0 <= 4 and -4 <= col0 <= 4
            shifts.add((row0, col0))
            padded = torch.zeros(32, 32, dtype=torch.bool)     # where the source is outside
            r = torch.arange(32) + row0
            c = torch.arange(32) + col0
            out_rows, out_cols = (r < 0) | (r > 31), (c < 0) | (c > 31)
            if flipped:
                out_cols = out_cols.flip(0)
            padded[out_rows, :] = True
            padded[:, out_cols] = True
            assert (img[:, padded] == 0).all() and (img[1:, ~padded] > 0).all()
    assert len(seen) == used and len(set(seen)) == used         # no image twice in an epoch
    assert 0.3 * used < flips < 0.7 * used                      # p = 0.5
    assert len(shifts) > 50                                     # of the 81 possible


def test_same_seed_and_epoch_same_batches_and_global_rng_untouched(c10):
    cfg = make_config("cifar10", str(c10), batch_size=100, seed=3, workers=0)
    first, second = build_data(cfg, CPU), build_data(cfg, CPU)
    for _ in first.train_batches(0):                            # an uninterrupted run...
        pass
    torch.manual_seed(123)
    resumed = list(second.train_batches(1))                     # ...and one resumed at epoch 1
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))                    # no global RNG draws
    for (xa, ya), (xb, yb) in zip(first.train_batches(1), resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = next(iter(first.train_batches(2)))
    assert not torch.equal(other[0], resumed[0][0])
    reseeded = next(iter(build_data(cfg.replace(seed=4), CPU).train_batches(1)))
    assert not torch.equal(reseeded[0], resumed[0][0])


def test_unset_seed_is_reproducible_but_varies_by_epoch(c10):
    cfg = make_config("cifar10", str(c10), batch_size=100, seed=None, workers=0)
    a, b = build_data(cfg, CPU), build_data(cfg, CPU)
    assert torch.equal(next(iter(a.train_batches(0)))[1], next(iter(b.train_batches(0)))[1])
    assert not torch.equal(next(iter(a.train_batches(0)))[1], next(iter(a.train_batches(1)))[1])


def test_missing_folder_tries_download_then_explains(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def offline(root, train=True, download=False):
        calls.append((root, download))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    cfg = make_config("cifar10", str(tmp_path / "nowhere"), workers=0)
    with pytest.raises(UserError) as err:
        build_data(cfg, CPU)
    message = str(err.value)
    assert calls == [(str(tmp_path / "nowhere"), True)]
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message
    assert "cifar-10-batches-py/data_batch_1..5, test_batch and batches.meta" in message
    assert "onorm data synth-cifar" in message and "download failed" in message


def test_incomplete_or_corrupt_folder_is_a_user_error(tmp_path):
    write_synthetic_cifar(tmp_path, classes=10, n_train=50, n_test=10)
    folder = tmp_path / "cifar-10-batches-py"
    cfg = make_config("cifar10", str(tmp_path), batch_size=8, workers=0)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 missing"):
        build_data(cfg, CPU)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="unreadable .data_batch_3"):
        build_data(cfg, CPU)
    (folder / "data_batch_3").write_bytes(b"cno_such_module\nX\n.")   # pickle: import it
    with pytest.raises(UserError, match="data_batch_3 is not a CIFAR batch: it asks for "
                                        "no_such_module.X"):
        build_data(cfg, CPU)
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(UserError, match=r"CIFAR-100 data incomplete \(meta missing\) in .*: "
                                        "expected cifar-100-python/train, test and meta"):
        build_data(make_config("cifar100", str(tmp_path), workers=0), CPU)


def test_batch_larger_than_dataset_is_a_user_error(tmp_path):
    write_synthetic_cifar(tmp_path, classes=10, n_train=20, n_test=10)
    with pytest.raises(UserError, match="batch_size 128 is larger than the 20"):
        build_data(make_config("cifar10", str(tmp_path), workers=0), CPU)


class _CreatesAFile:
    """Unpickled, this calls open(path, "w"): what a crafted batch file could do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_batch_file_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path):
    write_synthetic_cifar(tmp_path, classes=10, n_train=50, n_test=10)
    folder = tmp_path / "cifar-10-batches-py"
    victim = tmp_path / "created-by-the-pickle"
    payload = pickle.dumps({b"data": _CreatesAFile(str(victim)), b"labels": [0]}, protocol=2)
    pickle.loads(payload)[b"data"].close()   # plain pickle runs it: the file appears
    assert victim.exists()
    victim.unlink()
    (folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(UserError) as err:
        build_data(make_config("cifar10", str(tmp_path), batch_size=8, workers=0), CPU)
    message = str(err.value)
    assert "\n" not in message
    assert str(folder / "data_batch_2") in message and "io.open, which no CIFAR" in message
    assert not victim.exists()


def test_a_failed_download_leaves_nothing_and_a_deep_typo_downloads_nothing(
        tmp_path, monkeypatch, capsys):
    import torchvision.datasets as tvd

    calls = []

    def half_then_offline(root, train=True, download=False):
        calls.append(root)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")   # as torchvision does
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvd, "CIFAR10", half_then_offline)
    # a folder it created is removed again
    with pytest.raises(UserError, match="download failed"):
        build_data(make_config("cifar10", str(tmp_path / "new"), workers=0), CPU)
    assert calls == [str(tmp_path / "new")] and not (tmp_path / "new").exists()
    assert f"downloading CIFAR-10 (about 170 MB) into {tmp_path / 'new'}" in \
        capsys.readouterr().err
    # in a folder that was there, only what the download added goes
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="download failed"):
        build_data(make_config("cifar10", str(tmp_path / "mine"), workers=0), CPU)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    # neither the folder nor its parent exists: a typo, refused without downloading
    with pytest.raises(UserError) as err:
        build_data(make_config("cifar10", str(tmp_path / "typo" / "cifar"), workers=0), CPU)
    assert len(calls) == 2 and not (tmp_path / "typo").exists()
    assert str(err.value) == (f"CIFAR-10 data folder {tmp_path / 'typo' / 'cifar'} does not "
                              f"exist, nor does its parent {tmp_path / 'typo'}: check the path "
                              "(a download goes only into a folder that exists or whose parent "
                              "exists)")
