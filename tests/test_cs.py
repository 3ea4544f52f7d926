"""Compressive sensing on real image patches."""

import math

import numpy as np
import pytest
import skimage.io

from sparseprior.common.runs import RunDir
from sparseprior.solvers.cs import (
    CSConfig,
    assemble_patches,
    dct_dictionary,
    extract_patches,
    learn_dictionary,
    load_image,
    load_images,
    psnr,
    random_patches,
    run_cs,
    sensing_matrix,
)


def test_patches_round_trip_to_the_image():
    image = load_image("camera")[:100, :90]
    patches = extract_patches(image, 16)
    assert patches.shape == (6 * 5, 256)
    np.testing.assert_array_equal(assemble_patches(patches, image.shape, 16), image[:96, :80])
    np.testing.assert_array_equal(patches[1], image[:16, 16:32].ravel())
    with pytest.raises(ValueError, match="expected 30 patches"):
        assemble_patches(patches[:-1], image.shape, 16)
    with pytest.raises(ValueError, match="smaller than one"):
        extract_patches(image[:8], 16)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan"), True])
def test_sampling_rate_outside_0_1_is_rejected(rate):
    with pytest.raises(ValueError, match=r"sampling rate must be in \(0, 1\]"):
        sensing_matrix(rate, 256)
    with pytest.raises(ValueError, match="sampling rate"):
        CSConfig(rate=rate)


def test_sensing_and_dictionaries():
    Phi = sensing_matrix(0.25, 64, seed=1)
    assert Phi.shape == (16, 64)
    assert sensing_matrix(1.0, 64).shape == (64, 64)
    D = dct_dictionary(8)
    np.testing.assert_allclose(D.T @ D, np.eye(64), atol=1e-12)
    np.testing.assert_allclose(D[:, 0], 1 / 8)
    patches = random_patches([load_image("coins"), load_image("moon")], 600, 8, seed=0)
    assert patches.shape == (600, 64)
    learned = learn_dictionary(patches, 40, max_iter=1)
    assert learned.shape == (64, 40)
    np.testing.assert_allclose(np.linalg.norm(learned, axis=0), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="exactly d = 64"):
        learn_dictionary(patches, 40, method="dct")


def test_bundled_names_and_user_folder(tmp_path):
    assert set(load_images(["camera", "astronaut"])) == {"camera", "astronaut"}
    assert load_image("astronaut").ndim == 2 and load_image("astronaut").max() <= 1.0
    for name in ("coins", "moon"):
        skimage.io.imsave(tmp_path / f"{name}.png", (load_image(name)[:40, :40] * 255)
                          .astype(np.uint8))
    images = load_images(tmp_path)
    assert sorted(images) == ["coins", "moon"] and images["coins"].shape == (40, 40)
    with pytest.raises(ValueError, match="neither a bundled image"):
        load_image("eagle")
    with pytest.raises(ValueError, match="no image files"):
        load_images(_empty(tmp_path))


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_pipeline_end_to_end(tmp_path):
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    train_dir.mkdir()
    test_dir.mkdir()
    for name in ("astronaut", "coffee"):
        skimage.io.imsave(train_dir / f"{name}.png",
                          (load_image(name)[100:228, 100:228] * 255).astype(np.uint8))
    skimage.io.imsave(test_dir / "camera.png",
                      (load_image("camera")[200:264, 200:264] * 255).astype(np.uint8))
    config = CSConfig(rate=0.5, size=8, n_atoms=64, dictionary="dct", n_train=600, n_val=100,
                      n_nonzero=8, fista_iters=100, lams=(0.01, 0.002),
                      models=("ALISTA", "HyperLISTA"),
                      fit=CSConfig().fit.replace(num_layers=6, max_stage_steps=20))
    data = run_cs(RunDir(tmp_path / "run"), config, train_images=train_dir,
                  test_images=test_dir)
    scores = {" ".join(row["solver"].split()[:2]): row["camera PSNR"] for row in data["rows"]}
    assert set(scores) == {"FISTA (100", "FISTA (6", "ALISTA (6", "HyperLISTA (6"}
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["FISTA (100"] > 20.0            # rate 0.5 on a smooth 64x64 crop
    assert scores["FISTA (100"] > scores["FISTA (6"]
    assert (tmp_path / "run" / "reconstructions.png").is_file()
    assert (tmp_path / "run" / "checkpoints" / "ALISTA.safetensors").is_file()
    assert psnr(np.zeros(4), np.zeros(4)) == pytest.approx(300.0)
