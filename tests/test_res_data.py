"""Data for explanation supervision: the released RES format (a fixture written here), plain mask
files, joint transforms, mixed-batch collate, and the annotated digits with decoys and noise."""

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_fast.data.annotated import (AnnotatedDataset, Compose, RandomCrop, RandomHorizontalFlip,
                                          annotated_digits, annotated_digits_loaders, collate_annotated,
                                          decoy_positions, dilate, erode)
from saliency_fast.data.res_format import (AnnotatedImageFolder, explanation_loaders, load_mask, read_res_csv,
                                           res_format_loaders, write_res_csv)


# -- the released format ---------------------------------------------------------------------------
SIDE = 16


def _mask(seed, side=SIDE):
    return np.random.default_rng(seed).random((side, side)) < 0.3


@pytest.fixture
def released(tmp_path):
    """root/{train,test}/{cat,dog}/*.png + root/attention_label/{pos.csv, x_counterfactual.csv}."""
    root = tmp_path / "data"
    positive, negative = {}, {}
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                name = f"{split}_{label}_{index}"
                Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(folder / f"{name}.png")
                if index < count - 1:  # the last image of every class stays unannotated
                    positive[name] = _mask(len(positive))
                    if index == 0:
                        negative[name] = _mask(100 + len(negative))
    write_res_csv(root / "attention_label" / "pos.csv", positive)
    write_res_csv(root / "attention_label" / "x_counterfactual.csv", negative)
    # a row that is not "good" is ignored, even when its mask is invalid
    with open(root / "attention_label" / "pos.csv", "a") as handle:
        handle.write('train_cat_2,"[[7, 7]]",bad\n')
    return root, positive, negative


def test_released_format_reads_masks(released):
    root, positive, negative = released
    dataset = AnnotatedImageFolder(root / "train", image_size=SIDE)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    for index, (path, label) in enumerate(dataset.samples):
        x, y, pos, neg, has = dataset[index]
        assert x.shape == (3, SIDE, SIDE) and 0 <= float(x.min()) and float(x.max()) <= 1
        assert int(y) == label
        assert bool(has) == (path.stem in positive)
        expected_pos = positive.get(path.stem, np.zeros((SIDE, SIDE), bool))
        expected_neg = negative.get(path.stem, np.zeros((SIDE, SIDE), bool))
        assert np.array_equal(pos.numpy(), expected_pos) and np.array_equal(neg.numpy(), expected_neg)
    image = np.asarray(Image.open(dataset.samples[0][0]).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(dataset[0][0].permute(1, 2, 0).numpy(), image, rtol=0, atol=1e-7)


def test_released_loaders_and_mixed_batches(released):
    root, positive, _ = released
    train, test, classes = res_format_loaders(root, batch_size=4, image_size=SIDE)
    assert classes == ["cat", "dog"]
    assert len(train.dataset) == 4  # annotated_only: the released experiments train on annotated images
    x, y, pos, neg, has = next(iter(test))
    assert x.shape == (4, 3, SIDE, SIDE) and has.dtype == torch.bool and pos.dtype == torch.bool
    assert has.tolist() == [True, False, True, False]  # the test split mixes annotated and unannotated images
    assert not pos[~has].any() and not neg[~has].any()


def test_masks_at_the_original_size_follow_the_resize(released):
    root, positive, _ = released
    dataset = AnnotatedImageFolder(root / "train", image_size=8)
    _, _, pos, _, _ = dataset[0]
    expected = torch.nn.functional.interpolate(torch.from_numpy(positive[dataset.samples[0][0].stem])[None, None].float(),
                                               size=(8, 8), mode="nearest")[0, 0] > 0
    assert torch.equal(pos, expected)


def _rewrite(root, name, masks, check="good"):
    write_res_csv(root / "attention_label" / name, masks, check)


def test_bad_masks_give_clear_errors(released, tmp_path):
    root, positive, negative = released
    wrong = dict(positive)
    wrong["train_cat_0"] = np.zeros((5, 5), bool)
    _rewrite(root, "pos.csv", wrong)
    with pytest.raises(ValueError, match=r"positive mask of 'train_cat_0' is \(5, 5\)"):
        AnnotatedImageFolder(root / "train", image_size=SIDE)[0]
    soft = dict(positive)
    soft["train_cat_0"] = np.full((SIDE, SIDE), 0.5)
    _rewrite(root, "pos.csv", soft)
    with pytest.raises(ValueError, match="binary"):
        AnnotatedImageFolder(root / "train", image_size=SIDE)
    # a negative mask whose positive row is missing
    _rewrite(root, "pos.csv", {k: v for k, v in positive.items() if k != "train_cat_0"})
    with pytest.raises(ValueError, match="without a positive row.*train_cat_0"):
        AnnotatedImageFolder(root / "train", image_size=SIDE)
    _rewrite(root, "pos.csv", positive)
    with pytest.raises(ValueError, match="have no positive mask.*train_cat_2"):
        AnnotatedImageFolder(root / "train", image_size=SIDE, require_masks=True)
    (root / "attention_label" / "pos.csv").write_text("img_idx,attention\nx,[[1]]\n")
    with pytest.raises(ValueError, match="img_check"):
        AnnotatedImageFolder(root / "train", image_size=SIDE)
    (root / "attention_label" / "pos.csv").write_text("img_idx,attention,img_check\nx,\"[[1,0],[1]]\",good\n")
    with pytest.raises(ValueError, match="line 2"):
        AnnotatedImageFolder(root / "train", image_size=SIDE)
    (root / "attention_label" / "pos.csv").write_text("img_idx,attention,img_check\nx,[[1]],good\nx,[[0]],good\n")
    with pytest.raises(ValueError, match="second good row"):
        read_res_csv(root / "attention_label" / "pos.csv")
    lone = tmp_path / "other" / "train" / "cat"
    lone.mkdir(parents=True)
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(lone / "a.png")
    with pytest.raises(FileNotFoundError, match="attention_label"):
        AnnotatedImageFolder(tmp_path / "other" / "train", image_size=SIDE)


def test_plain_mask_files(tmp_path, released):
    root, positive, _ = released
    folder = tmp_path / "masks"
    folder.mkdir()
    names = sorted(positive)
    Image.fromarray(positive[names[0]].astype(np.uint8) * 255).save(folder / f"{names[0]}.png")
    np.save(folder / f"{names[1]}.npy", positive[names[1]].astype(np.uint8))
    np.savez(folder / f"{names[2]}.npz", mask=positive[names[2]])
    for name in names[:3]:
        suffix = {names[0]: ".png", names[1]: ".npy", names[2]: ".npz"}[name]
        assert np.array_equal(load_mask(folder / f"{name}{suffix}"), positive[name])
    dataset = AnnotatedImageFolder(root / "train", positive_masks=folder, image_size=SIDE)
    flags = [bool(dataset[i][4]) for i in range(len(dataset))]
    assert sum(flags) == sum(1 for n in names[:3] if n.startswith("train"))
    from_dict = AnnotatedImageFolder(root / "train", positive_masks={names[-1]: positive[names[-1]]}, image_size=SIDE)
    assert len(from_dict) == 6
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(folder / "grey.png")
    with pytest.raises(ValueError, match="grey.png.*binary"):
        load_mask(folder / "grey.png")


def test_explanation_loaders_on_released_layout(released):
    root, _, _ = released
    train, test, channels, size, classes = explanation_loaders(str(root), batch_size=2, image_size=SIDE, channels=3)
    assert (channels, size, classes) == (3, SIDE, 2)
    assert len(next(iter(train))) == 5
    with pytest.raises(FileNotFoundError, match="released RES layout"):
        explanation_loaders(str(root / "nowhere"))


# -- transforms and collate --------------------------------------------------------------------------
def test_transforms_move_masks_with_images():
    torch.manual_seed(1)
    pattern = torch.rand(6, 10) < 0.4
    image = pattern.float().unsqueeze(0).repeat(3, 1, 1)
    transform = Compose([RandomHorizontalFlip(1.0), RandomCrop(8, padding=2)])
    for _ in range(5):
        out, pos, neg = transform(image, pattern, ~pattern)
        assert out.shape == (3, 8, 8) and pos.shape == (8, 8)
        assert torch.equal(out[0] > 0.5, pos) and torch.equal(pos | neg, pos ^ neg)
    flipped, pos, _ = RandomHorizontalFlip(1.0)(image, pattern, pattern)
    assert torch.equal(pos, pattern.flip(-1)) and torch.equal(flipped[0] > 0.5, pos)


def test_collate_fills_missing_masks():
    x = torch.rand(2, 1, 4, 4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    batch = collate_annotated([(x[0], 3, mask, None), (x[1], 1, None, None)])
    images, labels, positive, negative, has = batch
    assert images.shape == (2, 1, 4, 4) and labels.tolist() == [3, 1] and has.tolist() == [True, False]
    assert positive[0].all() and not positive[1].any() and not negative.any()
    with pytest.raises(ValueError, match="positive_mask is"):
        collate_annotated([(x[0], 0, torch.ones(3, 3), None)])


def test_annotated_dataset_checks_masks():
    x = torch.rand(2, 1, 4, 4)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="positive_mask must have shape"):
        AnnotatedDataset(x, y, torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="binary"):
        AnnotatedDataset(x, y, torch.full((2, 4, 4), 0.5))
    dataset = AnnotatedDataset(x, y, torch.zeros(2, 4, 4).index_put_((torch.tensor([0]),), torch.ones(4, 4)))
    assert dataset.has_mask.tolist() == [True, False]


# -- annotated digits ----------------------------------------------------------------------------------
def test_annotated_digits_masks_and_counts():
    data = annotated_digits("train", n_images=50, n_annotated=20, seed=0)
    assert data.images.shape == (50, 1, 32, 32) and len(data) == 50
    assert torch.bincount(data.labels, minlength=10).tolist() == [5] * 10
    assert int(data.has_mask.sum()) == 20
    assert torch.bincount(data.labels[data.has_mask], minlength=10).tolist() == [2] * 10
    assert not data.positive[~data.has_mask].any()
    strokes = data.images[data.has_mask, 0] > 0.25
    assert torch.equal(data.positive[data.has_mask], strokes)
    assert not data.positive[:, :4].any() and not data.positive[:, -4:].any()  # the frame stays free
    again = annotated_digits("train", n_images=50, n_annotated=20, seed=0)
    assert torch.equal(again.images, data.images) and torch.equal(again.positive, data.positive)


def test_annotated_digits_decoys():
    train = annotated_digits("train", n_images=100, decoy=True, seed=0)
    positions = decoy_positions(32, 4)
    for index in range(len(train)):
        top, left = positions[int(train.labels[index])]
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[top:top + 4, left:left + 4] = True
        assert torch.equal(train.negative[index], expected)  # class-correlated in training
        assert (train.images[index, 0][expected] == 1).all()
    test = annotated_digits("test", decoy=True, seed=0)
    spots = [tuple(np.argwhere(m.numpy())[0]) for m in test.negative]
    matches = sum(spots[i] == positions[int(test.labels[i])] for i in range(len(test)))
    assert matches < 0.25 * len(test)  # random at test time (chance: 10%)
    assert not (test.positive & test.negative).any()


def test_annotation_noise_knobs():
    clean = annotated_digits("train", n_images=40, seed=1)
    jittered = annotated_digits("train", n_images=40, jitter=1, seed=1)
    grown = [bool((j & ~c).any()) and torch.equal(j & c, c) for c, j in zip(clean.positive, jittered.positive)]
    shrunk = [bool((c & ~j).any()) and torch.equal(j & c, j) for c, j in zip(clean.positive, jittered.positive)]
    assert all(g or s for g, s in zip(grown, shrunk)) and any(grown) and any(shrunk)
    partial = annotated_digits("train", n_images=40, incompleteness=0.4, seed=1)
    kept = partial.positive.flatten(1).sum(1).float() / clean.positive.flatten(1).sum(1).float()
    assert torch.all(partial.positive <= clean.positive)
    assert 0.45 < float(kept.mean()) < 0.75
    with pytest.raises(ValueError, match="incompleteness"):
        annotated_digits("train", n_images=10, incompleteness=1.0)


def test_morphology():
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    assert int(dilate(mask, 1).sum()) == 9 and torch.equal(erode(dilate(mask, 1), 1), mask)


def test_annotated_digits_loaders_yield_mixed_batches():
    train, test = annotated_digits_loaders(batch_size=10, n_train=30, n_annotated=10, seed=0)
    batches = list(train)
    assert len(batches) == 3 and all(len(b) == 5 for b in batches)
    assert sum(int(b[4].sum()) for b in batches) == 10
    x, y, pos, neg, has = next(iter(test))
    assert has.all() and pos.shape == (256, 32, 32)
