"""Image renderers and image datasets: hand-computed pixels, shapes, clipping, errors, I/O."""

import numpy as np
import pytest

from latentscm.data import DataError, Dataset
from latentscm.data.images import chemistry_cells, chemistry_projection, render
from latentscm.data.simulate import SimulationConfig, image_config, simulate


def test_chemistry_pixels_by_hand():
    z = np.array([[0.0, 4.0, -8.0], [16.0, -20.0, 1.6]])
    img = render(z, "chemistry").reshape(2, 50, 50)
    # variable 0 -> cell (0, 0), 1 -> (1, 1), 2 -> (2, 2): intensity z/16 + 0.5, z clipped to [-8, 8]
    assert img[0, 0, 0] == 0.5 and img[0, 9, 9] == 0.5 and img[0, 10, 10] == 0.75 and img[0, 25, 25] == 0.0
    assert img[1, 3, 7] == 1.0 and img[1, 19, 10] == 0.0 and img[1, 29, 20] == pytest.approx(0.6)
    assert img[0, 0, 10] == 0.0 and img[0, 10, 9] == 0.0  # outside the blocks
    # exactly 3 blocks of 100 pixels are non-zero in row 0 (block 2 is black at z = -8)
    assert np.count_nonzero(img[0]) == 200
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_chemistry_cells_and_linear_part():
    assert chemistry_cells(7).tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [0, 1], [0, 2]]
    assert len({tuple(c) for c in chemistry_cells(25)}) == 25
    A, b = chemistry_projection(3)
    z = np.random.default_rng(0).uniform(-8, 8, size=(5, 3))
    np.testing.assert_allclose(render(z), z @ A + b)
    assert A.shape == (3, 2500) and np.count_nonzero(A[0]) == 100 and A[0].max() == 1 / 16


def test_shift_pixels_by_hand():
    # left edge at 20 + 2.5 z: z = 0 -> 20 (columns 20..29 fully lit), z = 1 -> 22.5 (22 half, 32 half)
    img = render(np.array([[0.0, 1.0], [-8.0, 100.0]]), "chemistry_shift").reshape(2, 50, 50)
    row0 = img[0, 0]
    assert row0[19] == 0 and row0[20:30].tolist() == [1.0] * 10 and row0[30] == 0
    assert img[0, 9, 25] == 1.0 and img[0, 10, 25] == 1.0 and img[0, 20, 25] == 0.0  # strip of variable 1
    row1 = img[0, 10]
    assert row1[22] == 0.5 and row1[32] == 0.5 and row1[23:32].tolist() == [1.0] * 9 and row1[21] == 0
    assert img[1, 0, :10].tolist() == [1.0] * 10 and img[1, 0, 10] == 0  # z = -8: far left
    assert img[1, 10, 40:].tolist() == [1.0] * 10 and img[1, 10, 39] == 0  # z = 100 clipped to 8: far right
    assert img.reshape(2, -1).sum(1).tolist() == [200.0, 200.0]  # every block keeps its area


def test_shift_is_not_linear():
    z = np.array([[0.0], [4.0], [8.0]])
    x = render(z, "chemistry_shift")
    assert not np.allclose(x[1], (x[0] + x[2]) / 2)


def test_render_errors():
    with pytest.raises(ValueError, match="room for 1..25"):
        render(np.zeros((1, 26)))
    with pytest.raises(ValueError, match="room for 1..5"):
        render(np.zeros((1, 6)), "chemistry_shift")
    with pytest.raises(ValueError, match="unknown image layout"):
        render(np.zeros((1, 2)), "hue")
    with pytest.raises(ValueError, match="2-D"):
        render(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        render(np.array([[np.nan, 0.0]]))


def test_image_simulation_shapes_noise_and_truth():
    cfg = image_config(d=3, n_pairs=40, n_regimes=4, rows_per_regime=10, n_test_regimes=2)
    train, test = simulate(cfg, 0)
    assert train.x.shape == (80, 2500) and test.x.shape == (20, 2500)
    assert train.image_shape == (50, 50) and test.image_shape == (50, 50)
    resid = train.x - render(train.z, "chemistry")
    assert abs(resid.std() - 0.05) < 0.002  # pixel noise sd 0.05
    A, _ = chemistry_projection(3)
    np.testing.assert_array_equal(train.projection, A)
    # paired design kept: twins share pair ids, regime 0 observational
    assert (train.pair[:40] == train.pair[40:]).all() and not train.targets[:40].any()
    shift, _ = simulate(image_config("chemistry_shift", d=2, n_pairs=20, n_regimes=2, rows_per_regime=10), 1)
    assert shift.projection is None and shift.image_shape == (50, 50)


def test_image_config_errors():
    with pytest.raises(ValueError, match="set D=2500"):
        SimulationConfig(projection="chemistry")
    with pytest.raises(ValueError, match="room for 1..5"):
        image_config("chemistry_shift", d=6)
    with pytest.raises(ValueError, match="layout must be one of"):
        image_config("linear")


def test_image_shape_round_trips_and_is_validated(tmp_path):
    train, _ = simulate(image_config(d=2, n_pairs=10, n_regimes=2, rows_per_regime=5, n_test_regimes=1), 0)
    path = train.save(tmp_path / "img.npz")
    back = Dataset.load(path)
    assert back.image_shape == (50, 50) and back.subset(np.arange(3)).image_shape == (50, 50)
    x, t = np.zeros((2, 12)), np.zeros((2, 2))
    assert Dataset.from_arrays(x, t, image_shape=[2, 2, 3]).image_shape == (2, 2, 3)
    with pytest.raises(DataError, match="has 16 pixels but x has D = 12"):
        Dataset.from_arrays(x, t, image_shape=[4, 4])
    for bad in ([12], [3, 2, 2, 1], [6, -2], [2.5, 4.8]):
        with pytest.raises(DataError, match="2 or 3 positive integers"):
            Dataset.from_arrays(x, t, image_shape=bad)
