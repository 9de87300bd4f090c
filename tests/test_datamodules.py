"""Tests for the datamodules on the real data: splits, counts, normalisation, augmentation, the
randomness contract of TensorLoader (reproducible, DDP-shardable, global-RNG-free) and the
error messages for missing, damaged or unknown datasets. Fast: each dataset is loaded once."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import require_data
from datamodules import (
    DATAMODULES,
    MoonsDataModule,
    TensorLoader,
    create_datamodule,
    get_datamodule_class,
    list_datasets,
)
from datamodules.tensor import TensorDataModule, channel_stats, cutout, random_crop
from zoo.errors import ZooError

IMAGE_DATASETS = ["mnist", "fashion_mnist", "cifar10"]
# Official per-class counts (train 60,000 / 50,000; test 10,000), from the datasets' documentation.
COUNTS = {
    "mnist": ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
              [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
    "fashion_mnist": ([6000] * 10, [1000] * 10),
    "cifar10": ([5000] * 10, [1000] * 10),
}


@pytest.fixture(scope="module", params=IMAGE_DATASETS)
def dm(request):
    """Each image datamodule, set up once for the whole module (CIFAR-10 takes ~2 s to load)."""
    dm = create_datamodule(request.param, data_dir=str(require_data(request.param)))
    dm.setup("fit")
    return dm


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# --- registry -------------------------------------------------------------------------------
def test_registry_names_and_class_attributes():
    assert list_datasets() == ["moons", "mnist", "fashion_mnist", "cifar10", "image_folder"]
    for name, cls in DATAMODULES.items():
        assert cls.name == name and get_datamodule_class(name) is cls
        assert len(cls.class_names) == cls.num_classes


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ZooError) as e:
        create_datamodule("imagenet")
    assert "imagenet" in str(e.value) and all(name in str(e.value) for name in DATAMODULES)


# --- the real datasets ----------------------------------------------------------------------
def test_shapes_dtypes_and_split_sizes(dm):
    n_train = {"cifar10": 45_000}.get(dm.name, 55_000)
    assert dm.train_x.shape == (n_train, *dm.input_shape) and dm.train_x.dtype == torch.uint8
    assert dm.val_x.shape == (5_000, *dm.input_shape) and dm.test_x.shape == (10_000, *dm.input_shape)
    assert dm.train_y.dtype == dm.val_y.dtype == dm.test_y.dtype == torch.int64
    assert dm.mean.shape == dm.std.shape == (dm.input_shape[0],)
    assert dm.describe().startswith(f"{dm.name}: {n_train:,} train / 5,000 val / 10,000 test")


def test_per_class_counts(dm):
    train, test = COUNTS[dm.name]
    full_train_y = torch.cat([dm.train_y, dm.val_y])
    assert torch.bincount(full_train_y, minlength=10).tolist() == train
    assert torch.bincount(dm.test_y, minlength=10).tolist() == test


def test_train_and_val_split_the_official_training_set(dm):
    both = torch.cat([dm.train_indices, dm.val_indices])
    assert len(both) == len(torch.unique(both)) == len(dm.train_y) + len(dm.val_y)


def test_normalised_training_batches_are_standardised(dm):
    loader = TensorLoader(dm.train_x, dm.train_y, batch_size=5000, shuffle=True)  # no augmentation
    x = torch.cat([dm.normalize(xb) for xb, _ in list(loader)[:3]])  # (15000, C, H, W) float
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(x.shape[1]), atol=0.05)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(x.shape[1]), atol=0.05)


def test_val_and_test_batches_are_the_data_unaugmented(dm):
    dm.augment = True  # even with augmentation on, evaluation must see the plain images
    try:
        for loader, x, y in ((dm.val_dataloader(), dm.val_x, dm.val_y), (dm.test_dataloader(), dm.test_x, dm.test_y)):
            got_x, got_y = collect(loader)
            assert torch.equal(got_x, x) and torch.equal(got_y, y)
    finally:
        dm.augment = type(dm).augment_default


def test_augmentation_changes_images_but_not_labels(dm):
    dm.augment = True
    try:
        loader = dm.train_dataloader()
        x, y = next(iter(loader))
        idx = loader.indices(0)[: len(y)]
        plain = dm.train_x[idx]
        assert x.shape == plain.shape and x.dtype == torch.uint8 and torch.equal(y, dm.train_y[idx])
        changed = (x != plain).flatten(1).any(1).float().mean()
        assert changed > 0.5  # most images moved (a zero shift without a flip leaves ~1/25 equal)
    finally:
        dm.augment = type(dm).augment_default


def test_augmentation_defaults():
    assert not get_datamodule_class("mnist").augment_default and not get_datamodule_class("mnist").flip
    assert not get_datamodule_class("fashion_mnist").augment_default and get_datamodule_class("fashion_mnist").flip
    assert get_datamodule_class("cifar10").augment_default and get_datamodule_class("cifar10").pad == 4


def test_split_depends_on_split_seed_only(data_dir, monkeypatch):
    require_data("mnist")

    def split(**kwargs):
        dm = create_datamodule("mnist", data_dir=str(data_dir), **kwargs)
        dm.setup("fit")
        return dm.val_indices

    assert torch.equal(split(split_seed=0), split(split_seed=0))
    assert not torch.equal(split(split_seed=0), split(split_seed=1))
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")  # what seed_everything(1) sets
    assert torch.equal(split(), split(split_seed=1))


def test_setup_loads_once_and_train_fraction(data_dir):
    require_data("mnist")
    dm = create_datamodule("mnist", data_dir=str(data_dir), train_fraction=0.1)
    dm.setup("fit")
    first = dm.train_x
    dm.setup("test")
    assert dm.train_x is first and len(dm.train_y) == 5_500 and len(dm.val_y) == 5_000


def test_checkpoint_state_restores_normalisation(dm):
    fresh = type(dm)(data_dir=str(dm.data_dir))
    fresh.load_state_dict(dm.state_dict())
    x = dm.train_x[:8]
    assert torch.allclose(fresh.normalize(x), dm.normalize(x))


def test_trainer_supplies_epoch_rank_and_world_size(dm):
    dm.trainer = SimpleNamespace(current_epoch=3, global_rank=1, world_size=2,
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))
    try:
        loader = dm.train_dataloader()
        assert (loader.rank, loader.world_size, loader.epoch_fn()) == (1, 2, 3)
        assert len(loader) == -(-(len(dm.train_y) // 2) // dm.batch_size)
    finally:
        dm.trainer = None


def test_data_moves_to_the_trainer_device_once():
    # The meta device stands in for a GPU: tensors keep shapes and dtypes but hold no data.
    dm = create_datamodule("mnist", data_dir=str(require_data("mnist")), augment=True)
    dm.trainer = SimpleNamespace(current_epoch=0, global_rank=0, world_size=1,
                                 strategy=SimpleNamespace(root_device=torch.device("meta")))
    loader = dm.train_dataloader()
    moved = dm.train_x
    assert moved.device.type == "meta" and dm.train_dataloader().x is moved  # no second copy
    x, y = dm.on_after_batch_transfer(next(iter(loader)), 0)
    assert x.device.type == y.device.type == "meta" and x.dtype == torch.float32 and x.shape == (128, 1, 28, 28)


def test_a_chunk_is_normalised_one_batch_at_a_time():
    """--steps_per_execution hands training_step a chunk of uint8 batches; each is normalised when
    its step reads it (one hot buffer), to the same values as a batch of its own."""
    dm = create_datamodule("mnist", data_dir=str(require_data("mnist")))
    dm.steps_per_execution = 4  # as zoo.run sets it
    dm.trainer = SimpleNamespace(current_epoch=0, global_rank=0, world_size=1,
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))
    raw = next(iter(dm.train_dataloader()))
    assert isinstance(raw, list) and len(raw) == 4 and raw[0][0].dtype == torch.uint8
    chunk = dm.on_after_batch_transfer(raw, 0)
    assert len(chunk) == 4 and raw[0][0].dtype == torch.uint8  # nothing converted up front
    batches = list(chunk)
    assert len(batches) == 4
    for (x, y), (x_raw, y_raw) in zip(batches, raw):
        assert x.dtype == torch.float32 and y is y_raw
        assert torch.equal(x, dm.on_after_batch_transfer((x_raw, y_raw), 0)[0])
    assert torch.equal(chunk[3][0], batches[3][0])


def test_normalise_is_bitwise_the_four_pass_formula_in_any_default_dtype():
    """datamodules.images.normalize fuses the uint8 -> float conversion into the division: the values must
    be bitwise (x.float() / 255 - mean) / std's, also while Lightning's 64-true makes float64 the default
    dtype around each step (x.div(255) alone would then give float64)."""
    from datamodules.images import normalize

    g = torch.Generator().manual_seed(0)
    cases = (((64, 1, 28, 28), [0.2860], [0.3530]), ((16, 3, 32, 32), [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]))
    for shape, mean, std in cases:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        expected = x.float().div_(255).sub_(m).div_(s)
        old = torch.get_default_dtype()
        for default in (torch.float32, torch.float64):
            torch.set_default_dtype(default)
            try:
                out = normalize(x, mean, std)
            finally:
                torch.set_default_dtype(old)
            assert out.dtype == torch.float32 and torch.equal(out, expected), default


def test_a_chunk_already_on_the_device_is_not_walked_and_one_elsewhere_is_moved():
    dm = create_datamodule("moons")
    chunk = [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    assert dm.transfer_batch_to_device(chunk, torch.device("cpu"), 0) is chunk
    moved = dm.transfer_batch_to_device(chunk, torch.device("meta"), 0)  # (meta stands in for a GPU)
    assert len(moved) == 3 and all(t.device.type == "meta" for pair in moved for t in pair)
    x, y = dm.transfer_batch_to_device((chunk[0][0], chunk[0][1]), torch.device("meta"), 0)  # a plain batch
    assert x.device.type == y.device.type == "meta"
    # A subclass's loader may yield lists, with a 0-d tensor in them: moved as Lightning would, not iterated.
    x, y, w = dm.transfer_batch_to_device([chunk[0][0], chunk[0][1], torch.tensor(0.5)], torch.device("meta"), 0)
    assert x.device.type == y.device.type == w.device.type == "meta"


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                           ("cifar10", "cifar-10-batches-py")])
def test_missing_data_says_where_and_how_to_fix(name, expected, tmp_path):
    with pytest.raises(ZooError) as e:
        create_datamodule(name, data_dir=str(tmp_path)).setup("fit")
    message = str(e.value)
    assert str(tmp_path / expected) in message
    assert ("train-images-idx3-ubyte" if "MNIST" in expected else "data_batch_1") in message
    assert "--data.data_dir" in message and "ZOO_DATA" in message and "--data.download true" in message


def damaged_copy(src_dir, dst_dir, broken: str, keep_bytes: int) -> None:
    """Symlink every file of src_dir into dst_dir, except `broken`, copied truncated."""
    dst_dir.mkdir(parents=True)
    for f in os.listdir(src_dir):
        if f == broken:
            (dst_dir / f).write_bytes((src_dir / f).read_bytes()[:keep_bytes])
        else:
            (dst_dir / f).symlink_to(src_dir / f)


def test_truncated_mnist_file_is_named(data_dir, tmp_path):
    require_data("mnist")
    damaged_copy(data_dir / "MNIST" / "raw", tmp_path / "MNIST" / "raw", "t10k-labels-idx1-ubyte", 5000)
    with pytest.raises(ZooError, match="t10k-labels-idx1-ubyte is truncated or corrupted"):
        create_datamodule("mnist", data_dir=str(tmp_path)).setup("fit")


def test_wrong_magic_number_is_named(data_dir, tmp_path):
    require_data("mnist")
    damaged_copy(data_dir / "MNIST" / "raw", tmp_path / "MNIST" / "raw", "t10k-images-idx3-ubyte", 0)
    good = (data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + good[4:])  # 2049
    with pytest.raises(ZooError, match="t10k-images-idx3-ubyte is corrupted: not an IDX image file"):
        create_datamodule("mnist", data_dir=str(tmp_path)).setup("fit")


def test_truncated_cifar_file_is_named(data_dir, tmp_path):
    require_data("cifar10")
    damaged_copy(data_dir / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py", "data_batch_3", 1_000_000)
    with pytest.raises(ZooError, match="data_batch_3 is truncated or corrupted"):
        create_datamodule("cifar10", data_dir=str(tmp_path)).setup("fit")


def test_bad_options_are_zoo_errors():
    with pytest.raises(ZooError, match="larger than the training split"):
        MoonsDataModule(batch_size=1000).setup("fit")
    with pytest.raises(ZooError, match="train_fraction"):
        MoonsDataModule(train_fraction=0).setup("fit")
    with pytest.raises(ZooError, match="validation split"):
        MoonsDataModule(val_fraction=1).setup("fit")


class Tiny(TensorDataModule):
    """200 random 4x4 images: a dataset far smaller than the built-ins' 5,000 validation images."""

    name, num_classes, input_shape, class_names = "tiny", 2, (1, 4, 4), ["a", "b"]

    def load(self) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (250, 1, 4, 4), generator=g, dtype=torch.uint8)
        y = torch.arange(250) % 2
        return x[:200], y[:200], x[200:], y[200:]


@pytest.mark.parametrize("val_size, n_val", [(None, 20), (0.25, 50), (30, 30), (0, 0), (0.0, 0)])
def test_val_size_is_a_count_or_a_fraction_and_defaults_to_a_tenth(val_size, n_val):
    dm = Tiny(val_size=val_size, batch_size=8)
    dm.setup()
    assert len(dm.val_y) == n_val and len(dm.train_y) == 200 - n_val


@pytest.mark.parametrize("val_size, words", [(1.5, "neither a fraction"), (1.0, "neither a fraction"),
                                             (200, "between 0 and 199"), (-1, "between 0 and 199")])
def test_impossible_val_size_is_a_zoo_error(val_size, words):
    with pytest.raises(ZooError, match=words):
        Tiny(val_size=val_size, batch_size=8).setup()


def test_built_in_splits_are_unchanged_by_fractional_val_size(monkeypatch):
    """Committed results depend on the 5,000-image validation splits. The MNIST digests below are
    what the code before val_size took fractions gave (real MNIST, split_seed 42); the split
    depends only on the training-set size and the seed, so 60,000 stand-in images give it too."""
    import hashlib

    for name, n in (("mnist", 60_000), ("fashion_mnist", 60_000), ("cifar10", 50_000)):
        assert get_datamodule_class(name)().val_count(n) == 5_000
    dm = create_datamodule("mnist", split_seed=42)
    stand_in = torch.zeros(60_000, 1, 1, 1, dtype=torch.uint8), torch.zeros(60_000, dtype=torch.int64)
    monkeypatch.setattr(dm, "load", lambda: (*stand_in, *stand_in))
    dm.setup()
    digest = [hashlib.sha256(i.numpy().tobytes()).hexdigest()[:16] for i in (dm.val_indices, dm.train_indices)]
    assert digest == ["f77758c170d6fe95", "387ab774b7e42b6c"]
    assert dm.val_indices[:5].tolist() == [37542, 43087, 2992, 25810, 39634]


# --- moons ----------------------------------------------------------------------------------
def test_moons_matches_the_lecture_split():
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    x, y = make_moons(200, noise=0.2, random_state=42)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=42)
    dm = MoonsDataModule()
    dm.setup("fit")
    assert (len(dm.train_y), len(dm.val_y), len(dm.test_y)) == (126, 14, 60)
    assert np.array_equal(dm.test_x.numpy(), x_test.astype(np.float32)) and np.array_equal(dm.test_y.numpy(), y_test)
    rows = torch.cat([dm.train_x, dm.val_x])[torch.argsort(torch.cat([dm.train_indices, dm.val_indices]))]
    assert np.array_equal(rows.numpy(), x_train.astype(np.float32))  # train + val = sklearn's train part
    x_batch, y_batch = next(iter(dm.train_dataloader()))
    assert x_batch.dtype == torch.float32 and x_batch.shape == (32, 2) and y_batch.dtype == torch.int64
    assert dm.on_after_batch_transfer((x_batch, y_batch), 0)[0] is x_batch  # no normalisation


# --- the randomness contract of TensorLoader --------------------------------------------------
def toy_loader(n: int = 103, epoch: int = 0, **kwargs) -> TensorLoader:
    x = torch.arange(n * 3 * 8 * 8).remainder(251).to(torch.uint8).view(n, 3, 8, 8)
    options = dict(batch_size=16, shuffle=True, seed=5, epoch_fn=lambda: epoch, pad=2, flip=True) | kwargs
    return TensorLoader(x, torch.arange(n), **options)


def test_same_seed_and_epoch_give_identical_batches():
    a, b = collect(toy_loader()), collect(toy_loader())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], collect(toy_loader(epoch=1))[1])  # another epoch, another order
    assert not torch.equal(a[1], collect(toy_loader(seed=6))[1])  # another seed, another order


def test_loader_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    collect(toy_loader())
    assert torch.equal(state, torch.get_rng_state())


def test_ddp_training_shards_are_disjoint_equal_and_cover_the_epoch():
    shards = [toy_loader(rank=r, world_size=2).indices(0) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 51  # 103 truncated to 102
    assert len(toy_loader(rank=0, world_size=2)) == len(toy_loader(rank=1, world_size=2)) == 4
    whole = toy_loader().indices(0)  # every rank shares the single-process permutation
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.sort(whole[:102]).values)


def test_ddp_eval_shards_cover_every_sample_once():
    shards = [collect(toy_loader(shuffle=False, pad=0, flip=False, rank=r, world_size=2))[1] for r in (0, 1)]
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.arange(103))


def test_a_final_batch_of_one_is_dropped_for_training():
    loader = toy_loader(n=33, batch_size=16, drop_last_small=True)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [16, 16]
    assert [len(y) for _, y in toy_loader(n=33, shuffle=False)] == [16, 16, 1]


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    windows = [padded[..., dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]  # 25 shifts
    assert all(any(torch.equal(out[i], w[i]) for w in windows) for i in range(64))
    assert len({tuple(map(int, (out[i] == 0).flatten(1).sum(1))) for i in range(64)}) > 3  # shifts vary


def test_reflect_padding_crops_from_the_mirrored_image_and_reaches_the_loader():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0), mode="reflect")
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    windows = [padded[..., dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
    assert all(any(torch.equal(out[i], w[i]) for w in windows) for i in range(64))
    assert not (out == 0).any()  # no black border: the pixels are 1..255
    assert torch.equal(out, random_crop(x, 2, torch.Generator().manual_seed(0), mode="reflect"))  # seeded
    assert not (random_crop(x, 2, torch.Generator().manual_seed(0)) != 0).all()  # zeros, the default
    dm = TinyCrop(batch_size=8, translate=2, pad_mode="reflect")
    assert dm.train_dataloader().pad_mode == "reflect" and dm.hparams.pad_mode == "reflect"


@pytest.mark.parametrize("augment", [{}, dict(pad=2, flip=True), dict(pad=2, flip=True, alternate_flip=True),
                                     dict(flip=True, alternate_flip=True), dict(cutout=3)],
                         ids=["plain", "crop+flip", "crop+alternate_flip", "alternate_flip", "cutout"])
def test_loader_resumed_mid_epoch_yields_the_rest_of_the_same_epoch(augment):
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)
    opts = dict(batch_size=8, shuffle=True, seed=3, epoch_fn=lambda: 3) | augment
    full = list(TensorLoader(x, y, **opts))
    rest = list(TensorLoader(x, y, start_fn=lambda: 4, **opts))
    assert len(rest) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], rest):  # same samples, same crops and flips
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert TensorLoader(x, y, **opts).state_dict() == {}  # Lightning's resumable-loader interface


# --- airbench's options: translate and alternate_flip -------------------------------------------
class TinyCrop(Tiny):
    """Tiny with a 1 px crop by default and augmentation on, no flips."""

    pad, augment_default = 1, True


class TinyFlips(Tiny):
    """Tiny with flips (no crop) and augmentation on by default, like cifar10 without its crop."""

    flip, augment_default = True, True


def shifts(out: torch.Tensor, plain: torch.Tensor, pad: int) -> list[tuple[int, int] | None]:
    """For each image of out, the (dy, dx) shift of plain's image it equals (a window of the image
    zero-padded by pad), or None when no shift of at most pad pixels gives it."""
    padded, (h, w) = F.pad(plain, (pad, pad, pad, pad)), plain.shape[-2:]
    moves = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return [next(((dy - pad, dx - pad) for dy, dx in moves if torch.equal(o, p[:, dy:dy + h, dx:dx + w])), None)
            for o, p in zip(out, padded)]


def epoch_and_originals(dm: TensorDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """One training epoch of dm (epoch 0, no trainer) and the unaugmented images in the same order."""
    loader = dm.train_dataloader()
    x, _ = collect(loader)
    return x, dm.train_x[loader.indices(0)[: len(x)]]


def test_translate_sets_the_crop_padding():
    dm = TinyCrop(batch_size=8, translate=2)
    x, plain = epoch_and_originals(dm)
    moved = shifts(x, plain, 2)
    assert None not in moved  # every image is a shift of at most 2 px of its original
    assert max(max(abs(dy), abs(dx)) for dy, dx in moved) == 2  # and some by 2: more than the default 1
    assert dm.hparams.translate == 2  # saved, so checkpoints and logs say which crop trained
    x, plain = epoch_and_originals(TinyCrop(batch_size=8, translate=0))
    assert torch.equal(x, plain)  # 0: no crop at all


def test_translate_defaults_to_the_dataset_padding():
    x, plain = epoch_and_originals(TinyCrop(batch_size=8))
    moved = shifts(x, plain, 1)
    assert None not in moved and any(m != (0, 0) for m in moved)  # the class's 1 px crop, as before
    assert TinyCrop(translate=3, augment=False).train_dataloader().pad == 0  # no crop without augmentation


@pytest.mark.parametrize("translate", [-1, 1.5, True, "2"])
def test_bad_translate_is_a_zoo_error(translate):
    with pytest.raises(ZooError, match=r"must be a whole number >= 0.*Fix: pass e.g. --data.translate 2"):
        TinyCrop(batch_size=8, translate=translate).setup()


def flip_loader(epoch: int = 0, seed: int = 5, **kwargs) -> TensorLoader:
    """Alternating flips over 100 distinct random images (none is its own mirror); labels are the indices."""
    x = torch.randint(0, 256, (100, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    options = dict(batch_size=16, shuffle=True, seed=seed, epoch_fn=lambda: epoch, flip=True,
                   alternate_flip=True) | kwargs
    return TensorLoader(x, torch.arange(100), **options)


def flipped(*loaders: TensorLoader) -> torch.Tensor:
    """Whether each image (by its index in x) came mirrored in one epoch over the loaders (one per rank)."""
    out = torch.zeros(len(loaders[0].x), dtype=torch.int64)  # 0 unseen, 1 as is, 2 mirrored
    for loader in loaders:
        x, i = collect(loader)
        mirrored = (x == loader.x[i].flip(-1)).flatten(1).all(1)
        assert (mirrored | (x == loader.x[i]).flatten(1).all(1)).all()  # no crop: each is the image or its mirror
        out[i] = 1 + mirrored.long()
    assert (out > 0).all()  # every image seen once
    return out == 2


def test_alternate_flip_inverts_each_image_every_other_epoch():
    first = flipped(flip_loader(epoch=0))
    assert 30 < first.sum() < 70  # about half the images start mirrored
    assert torch.equal(flipped(flip_loader(epoch=1)), ~first)  # each is seen both ways in two epochs
    assert torch.equal(flipped(flip_loader(epoch=2)), first)
    assert torch.equal(flipped(flip_loader(epoch=7)), ~first)
    assert not torch.equal(flipped(flip_loader(epoch=2, alternate_flip=False)), first)  # unlike random flips


def test_alternate_flip_depends_on_the_seed_alone():
    a, b = collect(flip_loader()), collect(flip_loader())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seed, same batches
    first = flipped(flip_loader())
    assert not torch.equal(flipped(flip_loader(seed=6)), first)  # another seed, other decisions
    assert torch.equal(flipped(flip_loader(batch_size=7)), first)  # not the batch order
    ranks = [flip_loader(rank=r, world_size=2) for r in (0, 1)]  # nor the rank
    assert torch.equal(flipped(*ranks), first)


def test_alternate_flip_reaches_the_loader_and_is_saved():
    dm = TinyFlips(batch_size=8, alternate_flip=True)
    loader = dm.train_dataloader()
    assert loader.flip and loader.alternate_flip and dm.hparams.alternate_flip
    assert not TinyFlips(batch_size=8).train_dataloader().alternate_flip  # off by default
    assert not dm.val_dataloader().flip  # evaluation stays unaugmented


@pytest.mark.parametrize("cls, augment, words", [
    (Tiny, True, "never flipped.*no effect.*drop --data.alternate_flip"),
    (TinyFlips, False, "augmentation is off.*no effect.*--data.augment true"),
])
def test_alternate_flip_without_flips_is_a_zoo_error(cls, augment, words):
    with pytest.raises(ZooError, match=f"alternate_flip.*{words}"):
        cls(batch_size=8, augment=augment, alternate_flip=True).setup()


# --- cutout -----------------------------------------------------------------------------------
def test_cutout_paints_one_clipped_square_per_image_with_the_fill():
    x = torch.randint(1, 255, (500, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([255, 0, 128], dtype=torch.uint8)
    out = cutout(x, 4, torch.Generator().manual_seed(1), fill)
    changed = (out != x).any(1)  # (B, H, W): the painted pixels (x is never 0 or 255, so all of them show)
    assert ((out == fill.view(1, 3, 1, 1)).all(1) == changed).all()  # painted pixels carry the fill, all channels
    rows, cols = changed.any(2), changed.any(1)  # the square's rows and columns
    assert torch.equal(changed, rows[:, :, None] & cols[:, None, :])  # one axis-aligned rectangle per image
    for axis in (rows, cols):
        spans = axis.sum(1)
        assert changed.flatten(1).any(1).all() and spans.max() == 4 and spans.min() >= 2  # clipped at the border
        assert all(axis[i].nonzero().flatten().diff().eq(1).all() for i in range(500))  # contiguous
    corners = torch.stack([changed[:, 0, 0], changed[:, 0, -1], changed[:, -1, 0], changed[:, -1, -1]])
    assert corners.any(1).all()  # centres range over the whole image: every corner gets covered
    assert torch.equal(out, cutout(x, 4, torch.Generator().manual_seed(1), fill))  # seeded
    assert not torch.equal(out, cutout(x, 4, torch.Generator().manual_seed(2), fill))


def test_cutout_reaches_the_loader_with_the_mean_pixel_and_only_for_training():
    dm = TinyCrop(batch_size=8, translate=0, cutout=2)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.cutout == 2 and dm.hparams.cutout == 2
    assert torch.equal(loader.fill, (dm.mean * 255).round().to(torch.uint8))  # zero after normalisation
    x, plain = epoch_and_originals(dm)
    assert (x != plain).flatten(1).any(1).float().mean() > 0.8  # nearly every image got a square
    assert dm.val_dataloader().cutout == 0 and dm.test_dataloader().cutout == 0  # evaluation unaugmented
    x, plain = epoch_and_originals(TinyCrop(batch_size=8, translate=0))
    assert torch.equal(x, plain)  # off by default
    assert "cutout 2" in dm.describe()


@pytest.mark.parametrize("cls, options, words", [
    (TinyCrop, dict(cutout=-1), "whole number >= 0.*--data.cutout 16"),
    (TinyCrop, dict(cutout=2.5), "whole number >= 0"),
    (TinyCrop, dict(cutout=True), "whole number >= 0"),
    (TinyCrop, dict(cutout=2, augment=False), "augmentation is off.*--data.augment true"),
    (TinyCrop, dict(cutout=9), "larger than the 4x4 images"),
])
def test_bad_cutout_is_a_zoo_error(cls, options, words):
    with pytest.raises(ZooError, match=f"cutout.*{words}"):
        cls(batch_size=8, **options).setup()


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_stats_are_the_exact_float64_statistics(channels):
    # more images than one counting chunk, so the chunks' counts must add up
    x = torch.randint(0, 256, (5000, channels, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[:, 0] //= 2  # channels with different statistics, so a mixed-up channel shows
    mean, std = channel_stats(x)
    flat = x.double().div(255).transpose(0, 1).reshape(channels, -1)
    assert torch.equal(mean, flat.mean(1).float())
    assert torch.allclose(std.double(), flat.std(1, correction=0), rtol=0, atol=1e-7)
