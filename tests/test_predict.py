"""`train.py predict` and the pretrained-weights loading side (zoo/weights.py).

Images go through the same conversion and normalisation as training (checked against a manual
pipeline and against the image-folder datamodule's loader); predict is the model applied to
zoo.transforms(image), for PIL images and uint8 tensors alike; unreadable inputs are listed and
skipped; two-moons reads CSV points. Weights files are written from a tiny moons run, found through
a manifest in tmp_path and checked by sha256.
"""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

import evaluate
import train
import zoo
from datamodules.image_folder import load_image
from zoo import ZooModule
from zoo.commands.predict import predict
from zoo.commands.pretrained import save_pretrained
from zoo.errors import ZooError
from zoo.weights import Transform, load_pretrained, load_trained

MNIST_STATS = {"mean": [0.1307], "std": [0.3081]}


@pytest.fixture(scope="module")
def moons_run(tiny_moons_run) -> Path:
    return tiny_moons_run


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    """An untrained LeNet-5 saved like an MNIST checkpoint (no MNIST files needed)."""
    torch.manual_seed(0)
    model = ZooModule("lenet5", num_classes=10, input_shape=[1, 28, 28])
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(),
                "data_name": "mnist", "MNISTDataModule": MNIST_STATS}, path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of drawings in several formats and sizes, one broken file and one non-image."""
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, (mode, ext) in enumerate([("L", "png"), ("RGB", "jpg"), ("RGBA", "png")]):
        im = Image.new(mode, (40 + 10 * i, 30), "white")
        ImageDraw.Draw(im).line((5, 5, 30, 25), fill="black", width=4)
        im.save(folder / f"digit{i}.{ext}")
    Image.new("L", (28, 28), 0).save(folder / "sub" / "blank.png")
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "readme.txt").write_text("not an image: ignored in a folder")
    return folder


def manual_probs(ckpt_path: Path, files: list[Path], invert: bool = False) -> torch.Tensor:
    """What predict must compute, written out by hand: grayscale, 28x28 bilinear, /255, MNIST stats."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    model = ZooModule(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    xs = []
    for f in files:
        im = Image.open(f)
        if im.mode == "RGBA":
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
        x = torch.tensor(list(im.convert("L").resize((28, 28), Image.Resampling.BILINEAR).getdata()),
                         dtype=torch.float32).view(1, 28, 28)
        xs.append(255 - x if invert else x)
    x = (torch.stack(xs) / 255 - MNIST_STATS["mean"][0]) / MNIST_STATS["std"][0]
    with torch.no_grad():
        return model.eval()(x).softmax(-1)


# --- images -----------------------------------------------------------------------------------
@pytest.mark.parametrize("invert", [False, True])
def test_images_are_preprocessed_as_in_training(digits_ckpt, images, invert):
    r = predict(torch.load(digits_ckpt, weights_only=True), [str(images)], top_k=10, invert=invert)
    names = [Path(p["input"]) for p in r["predictions"]]
    assert [n.name for n in names] == ["digit0.png", "digit1.jpg", "digit2.png", "blank.png"]
    assert [s["input"] for s in r["skipped"]] == [str(images / "broken.png")]  # readme.txt: not an image
    expected = manual_probs(digits_ckpt, names, invert)
    for row, probs in zip(r["predictions"], expected):
        assert [c["class"] for c in row["top_k"]] == [str(i) for i in probs.argsort(descending=True).tolist()]
        got = torch.tensor([c["prob"] for c in sorted(row["top_k"], key=lambda c: c["index"])])
        assert torch.allclose(got, probs, atol=1e-6)


@pytest.mark.parametrize("model,dataset,invert", [("lenet5", "mnist", True), ("resnet20", "cifar10", False)])
def test_predict_is_the_model_on_transforms(model, dataset, invert, images, tmp_path):
    out = tmp_path / "p.json"
    assert train.main(["predict", "--pretrained", dataset, "--model", model, "--inputs", str(images), "--top_k", "10",
                       "--invert", str(invert).lower(), "--json", str(out)]) == 0
    net = zoo.create(model, pretrained=dataset)
    transform = zoo.transforms(net, invert=invert)
    rows = json.loads(out.read_text())["predictions"]
    assert len(rows) == 4
    for row in rows:
        with Image.open(row["input"]) as im, torch.no_grad():
            probs = net(transform(im)[None]).softmax(-1)[0]
        got = torch.tensor([c["prob"] for c in sorted(row["top_k"], key=lambda c: c["index"])])
        assert torch.allclose(got, probs, atol=1e-6)
        assert row["top_k"][0]["class"] == net.pretrained_cfg["class_names"][int(probs.argmax())]


def test_transforms_take_uint8_tensors_as_they_take_pil_images(images):
    for model, dataset in (("lenet5", "mnist"), ("resnet20", "cifar10")):
        transform = zoo.transforms(zoo.create(model, pretrained=dataset))
        for path in (images / "digit0.png", images / "digit2.png"):  # grayscale and RGBA
            with Image.open(path) as im:
                assert torch.equal(transform(torchvision.io.decode_image(str(path))), transform(im))


def test_images_convert_as_the_image_folder_datamodule_loads_them(images, tmp_path):
    """Transform (what predict feeds the model) and datamodules.image_folder.load_image (training on
    your own images) give the same pixels, also for a rotated phone photo and a palette image with
    transparency. (mean 0, std 1: Transform's normalisation is then only the scaling to 0..1.)"""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    photo = Image.new("RGB", (40, 20), (200, 30, 30))
    ImageDraw.Draw(photo).rectangle((0, 0, 10, 19), fill="white")  # not symmetric: a missed rotation shows
    photo.save(tmp_path / "phone.jpg", exif=exif)
    palette = Image.new("P", (30, 30), 0)
    ImageDraw.Draw(palette).rectangle((5, 5, 20, 20), fill=1)
    palette.save(tmp_path / "palette.png", transparency=0)
    files = [images / "digit0.png", images / "digit1.jpg", images / "digit2.png", tmp_path / "phone.jpg",
             tmp_path / "palette.png"]
    for path in files:
        for channels, color in ((1, "grayscale"), (3, "rgb")):
            cfg = {"input_shape": [channels, 28, 24], "color": color, "interpolation": "bilinear",
                   "mean": [0.0] * channels, "std": [1.0] * channels}
            with Image.open(path) as im:
                assert torch.equal(Transform(cfg)(im), load_image(path, channels, (28, 24)).float() / 255), path


def test_cli_table_csv_json_and_globs(digits_ckpt, images, tmp_path, capsys):
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    rc = train.main(["predict", "--checkpoint", str(digits_ckpt), "--inputs", str(images / "*.png"),
                     str(images / "missing.jpg"), "--top_k", "3", "--csv", str(out_csv), "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "top-3" in out and "digit0.png" in out and "skipped 2" in out and "broken.png" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [Path(r["input"]).name for r in rows] == ["digit0.png", "digit2.png"]
    assert set(rows[0]) == {"input", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"}
    j = json.loads(out_json.read_text())
    assert j["model"] == "lenet5" and len(j["predictions"]) == 2 and len(j["skipped"]) == 2
    assert float(rows[0]["prob_1"]) == pytest.approx(j["predictions"][0]["top_k"][0]["prob"], abs=1e-6)


def test_rgb_model_gets_rgb_at_its_size(tmp_path):
    model = ZooModule("lenet5", num_classes=3, input_shape=[3, 32, 32])
    ckpt = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "data_name": "x",
            "XDataModule": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "class_names": ["a", "b", "c"]}}
    Image.new("RGB", (100, 60), (255, 0, 0)).save(tmp_path / "red.jpg")
    r = predict(ckpt, [str(tmp_path / "red.jpg")], top_k=5)
    assert r["top_k"] == 3 and {c["class"] for c in r["predictions"][0]["top_k"]} == {"a", "b", "c"}


def test_nothing_readable_is_an_error(digits_ckpt, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("no")
    assert train.main(["predict", "--checkpoint", str(digits_ckpt), "--inputs", str(tmp_path / "bad.png")]) == 2
    assert "error: None of the 1 input file(s) could be read" in capsys.readouterr().err
    assert train.main(["predict", "--checkpoint", str(digits_ckpt), "--inputs", str(tmp_path / "*.jpg")]) == 2
    assert "No input files found" in capsys.readouterr().err
    assert train.main(["predict", "--inputs", str(tmp_path / "bad.png")]) == 2
    assert "--checkpoint PATH" in capsys.readouterr().err


# --- two-moons points -------------------------------------------------------------------------
def test_moons_checkpoint_predicts_csv_points(moons_run, tmp_path, capsys):
    points = tmp_path / "points.csv"
    points.write_text("x1,x2\n-1.0,0.2\n2.0,0.3\nnot,numbers\n1,2,3\n\n0.5,-0.4\nnan,1\n0,inf\n")
    rc = train.main(["predict", "--ckpt_path", str(moons_run), "--inputs", str(points), "--top_k", "1",
                     "--csv", str(tmp_path / "out.csv")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "skipped 4" in out and ":8: not finite numbers: nan,1" in out and ":9: not finite numbers: 0,inf" in out
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [(r["x1"], r["x2"]) for r in rows] == [("-1.0", "0.2"), ("2.0", "0.3"), ("0.5", "-0.4")]
    ckpt = torch.load(moons_run / "best.ckpt", weights_only=True)
    model = ZooModule(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        expected = model.eval()(torch.tensor([[-1.0, 0.2], [2.0, 0.3], [0.5, -0.4]])).argmax(1)
    assert [int(r["class_1"]) for r in rows] == expected.tolist()
    for flag in ("--top_k", "--batch_size"):  # positive integers by type: the parser says so in one sentence
        assert train.main(["predict", "--ckpt_path", str(moons_run), "--inputs", str(points), flag, "0"]) == 2
        assert f"{flag} 0: not a valid value; it must be a number with v>0" in capsys.readouterr().err


# --- pretrained weights -----------------------------------------------------------------------
@pytest.mark.parametrize("half", [False, True])
def test_save_and_load_pretrained(moons_run, tmp_path, half):
    weights = tmp_path / "weights"
    entry = save_pretrained(moons_run / "best.ckpt", weights, command="python train.py fit --data moons", half=half)
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest == [entry] and entry["model"] == "mlp" and entry["dataset"] == "moons"
    assert entry["dtype"] == ("float16" if half else "float32") and entry["file"] == "mlp_moons.pt"
    raw = torch.load(weights / entry["file"], weights_only=True)
    assert set(raw) == {"hyper_parameters", "state_dict", "data_name", "datamodule_hyper_parameters", "MoonsDataModule"}
    assert {v.dtype for v in raw["state_dict"].values()} == {torch.float16 if half else torch.float32}
    # the manifest's number is what evaluate.py reproduces from the shipped file
    assert evaluate.evaluate(str(weights / entry["file"]))["test_acc"] == entry["test_acc"]
    if not half:  # float32 weights are the checkpoint's: same accuracy as the run itself
        assert entry["test_acc"] == json.loads((moons_run / "metrics.json").read_text())["test_acc"]
    model = load_pretrained("mlp", "moons", manifest=weights / "manifest.json")
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    ckpt = torch.load(moons_run / "best.ckpt", weights_only=True)
    ref = ZooModule(**ckpt["hyper_parameters"])
    ref.load_state_dict(ckpt["state_dict"])
    x = torch.randn(16, 2)
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-2 if half else 0)


def test_pretrained_errors_are_clear(moons_run, tmp_path):
    weights = tmp_path / "weights"
    manifest = weights / "manifest.json"
    with pytest.raises(ZooError, match="manifest .* does not exist"):
        load_pretrained("mlp", "moons", manifest=manifest)
    save_pretrained(moons_run / "best.ckpt", weights, command="python train.py fit --data moons")
    with pytest.raises(ZooError, match="No pretrained lenet5 for mnist. Available weights: mlp on moons"):
        load_pretrained("lenet5", "mnist", manifest=manifest)
    with (weights / "mlp_moons.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ZooError, match="corrupted or was replaced.*git checkout"):
        load_pretrained("mlp", "moons", manifest=manifest)
    (weights / "mlp_moons.pt").unlink()
    with pytest.raises(ZooError, match="is missing"):
        load_pretrained("mlp", "moons", manifest=manifest)


def test_predict_with_pretrained_name(moons_run, tmp_path, capsys):
    weights = tmp_path / "weights"
    save_pretrained(moons_run / "best.ckpt", weights, command="python train.py fit --data moons", half=True)
    (tmp_path / "p.csv").write_text("0.0,1.0\n")
    rc = train.main(["predict", "--pretrained", "moons", "--manifest", str(weights / "manifest.json"),
                     "--inputs", str(tmp_path / "p.csv")])
    assert rc == 0 and "pretrained mlp on moons" in capsys.readouterr().out
    ckpt, source = load_trained(None, "moons", None, weights / "manifest.json")
    assert source == "pretrained mlp on moons"
    assert {v.dtype for v in ckpt["state_dict"].values()} == {torch.float32}  # half weights come back as float32


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """PIL's own conversion of a 16-bit grayscale PNG clips every value above 255 to white; training
    (image_folder) and predict read it scaled to 0..255 instead, and refuse what has no fixed scale."""
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "sixteen.png")  # 61% grey
    Image.fromarray(np.full((8, 8), 1000, np.int32)).save(tmp_path / "wide.tif")  # mode I, 16-bit range
    Image.fromarray(np.full((8, 8), 100, np.int32)).save(tmp_path / "narrow.tif")  # mode I, 8-bit range
    for name, value in (("sixteen.png", 156), ("wide.tif", 4), ("narrow.tif", 100)):  # round(40000 / 257) = 156
        for channels in (1, 3):
            assert load_image(tmp_path / name, channels, (4, 4)).unique().tolist() == [value], name
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "huge.tif")
    for name in ("float.tif", "huge.tif"):
        with pytest.raises(ValueError, match="has no fixed scale to 0..255"):
            load_image(tmp_path / name, 1, (4, 4))
