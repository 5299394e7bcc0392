"""`mdt prepare-latents` and the latent / image-folder training data sets, with a tiny random VAE."""

import json

import numpy as np
import pytest
import torch
from train_helpers import IMAGE_SIZE, write_pictures

from mdt.data import images, latents, open_dataset

pytest.importorskip("diffusers")


def _vae(path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path, low_cpu_mem_usage=False).eval()


def _cropped(path):
    """The picture as the model should see it, cut by hand: short side is already IMAGE_SIZE, so the center crop
    is a slice. -> (3, S, S) in [-1, 1]."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"))
    top, left = (arr.shape[0] - IMAGE_SIZE) // 2, (arr.shape[1] - IMAGE_SIZE) // 2
    arr = arr[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)


@pytest.fixture
def prepared(tmp_path, image_folder, tiny_vae_dir):
    folder, files = image_folder
    out = tmp_path / "latents"
    latents.prepare_latents(str(folder), str(out), vae=tiny_vae_dir, image_size=IMAGE_SIZE, batch_size=2,
                            device="cpu", progress=False)
    return out, files


def test_prepare_latents_stores_the_posterior_of_each_image_and_its_flip(prepared, tiny_vae_dir):
    out, files = prepared
    n = len(files)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == latents.FORMAT and meta["version"] == latents.VERSION
    assert meta["count"] == n == 5 and meta["classes"] == ["cat", "dog"]
    assert meta["image_size"] == IMAGE_SIZE and meta["scale"] == 0.18215 and meta["latent_shape"] == [4, 8, 8]
    assert meta["vae"] == tiny_vae_dir
    np.testing.assert_array_equal(np.load(out / "labels.npy"), [label for _, label in files])
    assert (out / "files.txt").read_text().split() == [f"{p.parent.name}/{p.name}" for p, _ in files]

    mean, std = np.load(out / "mean.npy"), np.load(out / "std.npy")
    assert mean.shape == std.shape == (n, 2, 4, 8, 8) and mean.dtype == std.dtype == np.float16

    x = torch.stack([_cropped(p) for p, _ in files])  # (n, 3, S, S), computed independently of the module
    with torch.no_grad():
        post = _vae(tiny_vae_dir).encode(torch.cat([x, x.flip(-1)])).latent_dist
    for got, want in ((mean, post.mean), (std, post.std)):
        want = want.view(2, n, 4, 8, 8).transpose(0, 1)  # (n, [image, flip], C, h, w)
        torch.testing.assert_close(torch.from_numpy(got).float(), want, rtol=2e-3, atol=2e-4)
    # the flip is encoded, not copied: the VAE is not mirror-symmetric
    assert np.abs(mean[:, 0].astype(np.float32) - mean[:, 1]).mean() > 0.05


def test_prepare_latents_refuses_to_overwrite_and_marks_unfinished_runs(prepared, image_folder, tiny_vae_dir):
    out, _ = prepared
    with pytest.raises(ValueError, match="already holds prepared latents"):
        latents.prepare_latents(str(image_folder[0]), str(out), vae=tiny_vae_dir, image_size=IMAGE_SIZE,
                                device="cpu", progress=False)
    (out / "meta.json").unlink()  # as if the run had been killed before its end
    assert latents.is_latent_folder(str(out))
    with pytest.raises(ValueError, match="unfinished"):
        open_dataset(str(out))


def test_center_crop_keeps_the_middle_square():
    from PIL import Image

    for h, w in ((100, 400), (400, 100), (17, 40)):  # halved twice / twice / only resized (upscaled)
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        if w > h:
            arr[:, w // 4:3 * w // 4] = 255  # white middle half, black sides
        else:
            arr[h // 4:3 * h // 4] = 255
        out = images.center_crop_arr(Image.fromarray(arr), IMAGE_SIZE)
        assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and out.dtype == np.uint8
        assert out.min() >= 250, (h, w)  # the square cut from the middle is all white


def _synthetic_folder(path, mean, std, labels, classes):
    """A latent folder written by hand (not by prepare_latents) to test the reader on known numbers."""
    path.mkdir()
    np.save(path / "mean.npy", mean.astype(np.float16))
    np.save(path / "std.npy", std.astype(np.float16))
    np.save(path / "labels.npy", np.asarray(labels, dtype=np.int64))
    meta = {"format": latents.FORMAT, "version": latents.VERSION, "vae": "unused", "image_size": 16,
            "scale": 0.5, "latent_shape": list(mean.shape[2:]), "count": len(labels), "classes": classes}
    (path / "meta.json").write_text(json.dumps(meta))


def test_latent_folder_draws_a_flip_and_a_posterior_sample_per_example(tmp_path):
    c, h, w = 4, 3, 3
    mean = np.zeros((2, 2, c, h, w))
    mean[0, 0], mean[0, 1] = 3.0, -3.0  # example 0: image latents +3, flipped -3
    mean[1] = 10.0
    std = np.broadcast_to(np.array([0.25, 0.5, 1.0, 2.0]).reshape(1, 1, c, 1, 1), mean.shape).copy()
    _synthetic_folder(tmp_path / "lat", mean, std, [1, 0], ["a", "b"])
    data = open_dataset(str(tmp_path / "lat"))
    assert isinstance(data, latents.LatentFolder)
    assert (len(data), data.in_channels, data.input_size, data.num_classes) == (2, c, h, 2)

    b = data.batch(torch.tensor([1, 0]))
    assert b["mean"].shape == (2, 2, c, h, w) and b["std"].shape == (2, 2, c, h, w)
    assert b["y"].tolist() == [0, 1]

    n = 4000
    z, y = data.to_model_input(data.batch(torch.zeros(n, dtype=torch.long)), torch.device("cpu"))
    assert z.shape == (n, c, h, w) and z.dtype == torch.float32 and y.tolist() == [1] * n
    z = z / 0.5  # undo the scale
    flipped = z.mean(dim=(1, 2, 3)) < 0  # which of the two latents each example was drawn around
    assert abs(flipped.float().mean().item() - 0.5) < 0.04  # p = 0.5, drawn per example
    centre = torch.where(flipped[:, None, None, None], -3.0, 3.0)
    eps = (z - centre) / torch.from_numpy(std[0, 0]).float()  # standardised with the per-channel std
    assert eps.mean().abs() < 0.02 and (eps.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    z2, _ = data.to_model_input(data.batch(torch.zeros(n, dtype=torch.long)), torch.device("cpu"))
    assert not torch.equal(z * 0.5, z2)  # fresh draws every step
    torch.manual_seed(1)
    za, _ = data.to_model_input(data.batch(torch.tensor([0, 1])), torch.device("cpu"))
    torch.manual_seed(1)
    zb, _ = data.to_model_input(data.batch(torch.tensor([0, 1])), torch.device("cpu"))
    assert torch.equal(za, zb)  # from torch's global RNG, which checkpoints save


def test_latent_folder_decodes_with_the_vae_of_its_meta(prepared, tiny_vae_dir):
    out, _ = prepared
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "scale": 0.25}))  # decode must read the scale too
    data = latents.LatentFolder(str(out))
    z, _ = data.to_model_input(data.batch(torch.tensor([0, 3])), torch.device("cpu"))
    pictures = data.decode(z)
    assert pictures.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        want = _vae(tiny_vae_dir).decode(z / 0.25).sample.clamp(-1, 1)
    torch.testing.assert_close(pictures, want)


def test_image_folder_data_encodes_a_flipped_or_plain_picture_per_example(image_folder, tiny_vae_dir):
    folder, files = image_folder
    data = open_dataset(str(folder), vae=tiny_vae_dir, image_size=IMAGE_SIZE, device="cpu")
    assert isinstance(data, images.ImageFolderData)
    assert (len(data), data.in_channels, data.input_size, data.num_classes) == (5, 4, 8, 2)
    n = 300
    b = data.batch(torch.full((n,), 3, dtype=torch.long))
    assert b["image"].shape == (n, 3, IMAGE_SIZE, IMAGE_SIZE) and b["y"].tolist() == [1] * n
    torch.testing.assert_close(b["image"][0], _cropped(files[3][0]))
    z, _ = data.to_model_input(b, torch.device("cpu"))
    assert z.shape == (n, 4, 8, 8)
    x = _cropped(files[3][0])[None]
    with torch.no_grad():
        post = _vae(tiny_vae_dir).encode(torch.cat([x, x.flip(-1)])).latent_dist
    eps = (z[:, None] / 0.18215 - post.mean) / post.std  # (n, [plain, flipped], C, h, w)
    dist = eps.square().mean(dim=(2, 3, 4))  # ~1 around the latent it was drawn from, large for the other
    flipped = dist[:, 1] < dist[:, 0]
    assert abs(flipped.float().mean().item() - 0.5) < 0.12
    assert (dist.min(dim=1).values - 1).abs().max() < 0.5 and dist.max(dim=1).values.min() > 5


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.scan_image_folder(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class sub-folders"):
        images.scan_image_folder(str(tmp_path / "flat"))
    write_pictures(tmp_path / "partial", {"a": [(4, 4)]})
    (tmp_path / "partial" / "b").mkdir()
    with pytest.raises(ValueError, match="without images: b"):
        images.scan_image_folder(str(tmp_path / "partial"))
