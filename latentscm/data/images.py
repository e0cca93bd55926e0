"""Image renderers: latents ``z`` (N, d) -> flattened grey images (N, H*W) on the [0, 1] scale.

Two layouts, both numpy only, both deterministic (the pixel noise is added by the caller, e.g.
:func:`~latentscm.data.simulate`):

``"chemistry"`` (the seed paper's layout)
    A 50 x 50 image cut into a 5 x 5 grid of 10 x 10 cells. Variable j owns one cell at a fixed
    position (:func:`chemistry_cells`: the diagonal first, then the other cells row by row) and
    paints it with the intensity ``(clip(z_j, -8, 8) / 16 + 0.5)`` (the reference's red channel
    ``255 * (z / 16 + 0.5)`` divided by 255). Every other pixel is 0. Apart from the clipping the
    image is linear in z, so a linear decoder is exact for ``|z| <= 8``. Any ``d <= 25``.

``"chemistry_shift"`` (a harder variant)
    Variable j owns the horizontal strip of rows ``10 j .. 10 j + 9`` and draws a white (intensity
    1) 10 x 10 block in it whose left edge sits at ``20 + 2.5 * clip(z_j, -8, 8)`` pixels (0 at
    ``z = -8``, 40 at ``z = 8``). Pixels at the block's edges are covered partly and get the covered
    fraction (anti-aliasing), so the image is continuous, piecewise linear in z, but not linear:
    a pixel lights up only while the block passes over it. A decoder must be nonlinear.
    ``d <= 5``.

How often the clipping bites depends on the SCM's scale: :func:`clipped_fraction` reports it per node
(``image_config(layout, scale="saturating")`` makes it frequent, see :mod:`latentscm.data.simulate`).

Only the informative channel is rendered (grey, ``image_shape = (50, 50)``): the reference images are
RGB with the information in the red channel only; the other channels carry no signal, and dropping
them divides the observation dimension by three.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IMAGE_LAYOUTS", "IMAGE_SHAPE", "IMAGE_SIZE", "CELL", "Z_CLIP", "check_fits", "chemistry_cells",
           "chemistry_projection", "clipped_fraction", "max_latents", "render"]

IMAGE_SIZE = 50
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
CELL = 10
Z_CLIP = 8.0
IMAGE_LAYOUTS = ("chemistry", "chemistry_shift")
_GRID = IMAGE_SIZE // CELL


def max_latents(layout: str) -> int:
    """Largest number of latents the layout has room for (25 for chemistry, 5 for chemistry_shift)."""
    if layout == "chemistry":
        return _GRID * _GRID
    if layout == "chemistry_shift":
        return _GRID
    raise ValueError(f"unknown image layout {layout!r}; choose one of {IMAGE_LAYOUTS}")


def chemistry_cells(d: int) -> np.ndarray:
    """(d, 2) grid cell (row, column) of each variable's block: the 5 diagonal cells first, then the
    remaining cells in row-major order. Pixel rows ``10 * row .. 10 * row + 9``, likewise columns."""
    check_fits(d, "chemistry")
    diagonal = [(i, i) for i in range(_GRID)]
    rest = [(r, c) for r in range(_GRID) for c in range(_GRID) if r != c]
    return np.array((diagonal + rest)[:d], dtype=np.int64)


def check_fits(d: int, layout: str) -> None:
    """Raise ``ValueError`` naming the limit when ``d`` latents do not fit the layout."""
    limit = max_latents(layout)
    if int(d) != d or d < 1 or d > limit:
        raise ValueError(f"image layout {layout!r} has room for 1..{limit} latent variables "
                         f"({IMAGE_SIZE}x{IMAGE_SIZE} image, {CELL}x{CELL} blocks); got d={d}. "
                         + ("Use layout 'chemistry' (up to 25) or fewer latents"
                            if layout == "chemistry_shift" else "Use fewer latents"))


def _coverage(left: np.ndarray) -> np.ndarray:
    """(N, 50) fraction of each pixel column covered by a block spanning ``[left, left + 10)``."""
    cols = np.arange(IMAGE_SIZE, dtype=np.float64)
    lo = np.maximum(cols[None, :], left[:, None])
    hi = np.minimum(cols[None, :] + 1.0, left[:, None] + CELL)
    return np.clip(hi - lo, 0.0, 1.0)


def render(z, layout: str = "chemistry") -> np.ndarray:
    """Noiseless images of latents ``z``.

    Parameters
    ----------
    z : (N, d) array
        Latent values; clipped to ``[-8, 8]``.
    layout : {"chemistry", "chemistry_shift"}
        See the module docstring.

    Returns
    -------
    x : (N, 2500) float64 array in [0, 1]
        Images flattened row-major from shape ``(50, 50)``.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"render: z must be 2-D (N, d), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("render: z has non-finite entries; images need finite latents")
    n, d = z.shape
    check_fits(d, layout)
    zc = np.clip(z, -Z_CLIP, Z_CLIP)
    img = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE))
    if layout == "chemistry":
        for j, (r, c) in enumerate(chemistry_cells(d)):
            img[:, CELL * r:CELL * (r + 1), CELL * c:CELL * (c + 1)] = (zc[:, j] / 16.0 + 0.5)[:, None, None]
    else:
        for j in range(d):
            cover = _coverage(20.0 + 2.5 * zc[:, j])
            img[:, CELL * j:CELL * (j + 1), :] = cover[:, None, :]
    return img.reshape(n, IMAGE_SIZE * IMAGE_SIZE)


def chemistry_projection(d: int) -> np.ndarray:
    """(d, 2500) linear map and the constant it adds: ``render(z, "chemistry") == z @ A + b`` for
    ``|z| <= 8``. Returns ``(A, b)``."""
    cells = chemistry_cells(d)
    A = np.zeros((d, IMAGE_SIZE, IMAGE_SIZE))
    b = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    for j, (r, c) in enumerate(cells):
        A[j, CELL * r:CELL * (r + 1), CELL * c:CELL * (c + 1)] = 1.0 / 16.0
        b[CELL * r:CELL * (r + 1), CELL * c:CELL * (c + 1)] = 0.5
    return A.reshape(d, -1), b.reshape(-1)


def clipped_fraction(z) -> np.ndarray:
    """(d,) fraction of the rows of ``z`` (N, d) whose latent the renderers clip (``|z_j| > 8``): there the
    image no longer moves with z (``chemistry``: the block is saturated black or white)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"clipped_fraction: z must be 2-D (N, d), got shape {z.shape}")
    return (np.abs(z) > Z_CLIP).mean(0)
