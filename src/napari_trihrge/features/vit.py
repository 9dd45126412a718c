"""The timm encoder: a timm image model embedding H&E windows (:class:`TimmEncoder`).

Windows are read with ``TissueImage.read_um`` straight to the encoder's input size (224 px), RGB,
so a 112 um window is seen at 0.5 um/px (UNI's native 20x) and a 336 um window at 1.5 um/px.
They are normalised with the model's mean/std, batched, and embedded under
``torch.inference_mode()`` (bf16 autocast and channels_last on CUDA; timm's attention uses
``F.scaled_dot_product_attention``). The next batch is read in background threads while the
current one runs; on CUDA it is staged in pinned memory. ViTs also give a dense patch-token grid
(:meth:`TimmEncoder.embed_dense`).

The encoders are built by :mod:`.factory` (UNI, UNI2-h, hub models, local checkpoints, timm
names) from :mod:`._architectures`, :mod:`._hub` and :mod:`._checkpoint`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..device import resolve_device
from ..errors import TrihrgeInputError
from ..progress import CancelOnlyProgress, Progress, ensure_progress
from ._architectures import IMAGENET_MEAN, IMAGENET_STD, Architecture
from .base import Encoder, as_centres_rc_um, check_window_um, dense_window_sizes

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..io.image import TissueImage


def _fingerprint(model: torch.nn.Module) -> str:
    """Cheap identity of the weights: shapes + a strided sample of every tensor."""
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            flat = v.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class TimmEncoder(Encoder):
    """A timm image model used as a window encoder (its pooled output / CLS token)."""

    def __init__(self, model: torch.nn.Module, *, name: str, weights_id: str,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_px: int = 224, native_um_per_px: float = 0.5, device: str = "auto",
                 batch_size: int | None = None, num_workers: int | None = None,
                 precision: str = "auto"):
        import torch

        self.device = str(resolve_device(device))
        self.cuda = self.device.startswith("cuda")
        self.model = model.eval().to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = name
        self.weights_id = weights_id
        self.embed_dim = int(getattr(model, "num_features", 0) or model.embed_dim)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_px = int(input_px)
        self.native_um_per_px = float(native_um_per_px)
        if precision not in ("auto", "bf16", "fp16", "fp32"):
            raise TrihrgeInputError(f"unknown precision {precision!r}", "use auto, bf16 or fp32")
        self.precision = ("bf16" if self.cuda else "fp32") if precision == "auto" else precision
        self.batch_size = int(batch_size or (256 if self.cuda else 64))
        self.num_workers = int(num_workers or min(8, os.cpu_count() or 1))
        self._fp: str | None = None
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_model(cls, model: torch.nn.Module, *, name: str, weights_id: str,
                   arch: Architecture | None, device: str = "auto", **opts: Any) -> TimmEncoder:
        a: dict[str, Any] = {}
        if arch is not None:
            a = dict(mean=arch.mean, std=arch.std, input_px=arch.input_px,
                     native_um_per_px=arch.native_um_per_px)
        return cls(model, name=name, weights_id=weights_id, device=device, **{**a, **opts})

    def config_key(self) -> str:
        if self._fp is None:
            self._fp = _fingerprint(self.model)
        return (f"timm|{self.name}|{self.weights_id}|{self._fp}|{self.input_px}|"
                f"{self.mean}|{self.std}|{self.precision}")

    # -- batches ---------------------------------------------------------------------------
    def _read_batch(self, image: TissueImage, top_left_rc_um: np.ndarray, size_um: float,
                    pool: ThreadPoolExecutor) -> torch.Tensor:
        import torch

        px = (self.input_px, self.input_px)
        tiles = list(pool.map(lambda tl: np.asarray(image.read_um(tl, (size_um, size_um), px)
                                                    )[..., :3], list(top_left_rc_um)))
        t = torch.from_numpy(np.ascontiguousarray(np.stack(tiles)))
        return t.pin_memory() if self.cuda else t

    def _to_input(self, batch_u8: torch.Tensor) -> torch.Tensor:
        import torch

        x = batch_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self._mean_t) / self._std_t
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _autocast(self):
        import contextlib

        import torch

        if self.precision in ("bf16", "fp16") and self.device != "cpu":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.split(":")[0], dtype=dtype)
        return contextlib.nullcontext()

    def _forward(self, batch_u8: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            y = self.model(self._to_input(batch_u8))
        return y.float().cpu().numpy()

    def _pipelined(self, image: TissueImage, top_left_rc_um: np.ndarray, size_um: float,
                   run: Callable[[torch.Tensor, slice], None], progress: Progress) -> None:
        """Read batch k+1 in background threads while ``run`` processes batch k."""
        n = len(top_left_rc_um)
        slices = [slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        with ThreadPoolExecutor(self.num_workers) as readers, ThreadPoolExecutor(1) as ahead:
            def prep(sl: slice) -> torch.Tensor:
                return self._read_batch(image, top_left_rc_um[sl], size_um, readers)

            fut = ahead.submit(prep, slices[0]) if slices else None
            for k, sl in enumerate(slices):
                batch = fut.result()
                if k + 1 < len(slices):
                    fut = ahead.submit(prep, slices[k + 1])
                run(batch, sl)
                progress.advance(sl.stop - sl.start)

    def embed_windows(self, image: TissueImage, centres_rc_um: np.ndarray, window_um: float,
                      *, progress: Progress | None = None) -> np.ndarray:
        progress = ensure_progress(progress)
        centres = as_centres_rc_um(centres_rc_um)
        window_um = check_window_um(window_um)
        out = np.empty((len(centres), self.embed_dim), dtype=np.float32)

        def run(batch: torch.Tensor, sl: slice) -> None:
            out[sl] = self._forward(batch)

        self._pipelined(image, centres - window_um / 2.0, window_um, run, progress)
        return out

    # -- dense patch-token grid ------------------------------------------------------------
    @property
    def patch_px(self) -> int:
        pe = getattr(self.model, "patch_embed", None)
        ps = getattr(pe, "patch_size", None)
        if ps is None:
            raise TrihrgeInputError(f"{self.name} has no patch tokens",
                                    "use a ViT encoder (uni, uni2-h) for dense token features")
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def _tokens(self, batch_u8: torch.Tensor) -> np.ndarray:
        """Patch tokens (B, G, G, D) float16 of a batch of input_px tiles."""
        import torch

        with torch.inference_mode(), self._autocast():
            feats = self.model.forward_features(self._to_input(batch_u8))
        n_prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        g = self.input_px // self.patch_px
        tok = feats[:, n_prefix:, :].float()
        return tok.reshape(tok.shape[0], g, g, tok.shape[-1]).cpu().numpy().astype(np.float16)

    def token_grid(self, image: TissueImage, top_left_rc_um: Sequence[float],
                   shape_tiles: tuple[int, int], *, progress: Progress | None = None
                   ) -> tuple[np.ndarray, float]:
        """Patch-token grid of ``shape_tiles`` adjacent tiles of ``input_px`` pixels at the
        native pixel size, starting at ``top_left_rc_um``: ``(R*G, C*G, D)`` float16 and the
        token size in um. One forward per tile (UNI: 112 um tiles, 8 um tokens)."""
        progress = ensure_progress(progress)
        tile_um = self.input_px * self.native_um_per_px
        g = self.input_px // self.patch_px
        rows, cols = shape_tiles
        tl = np.asarray(top_left_rc_um, dtype=np.float64)
        ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        corners = tl[None, :] + np.stack([ii.ravel(), jj.ravel()], axis=1) * tile_um
        grid = np.empty((rows * g, cols * g, self.embed_dim), dtype=np.float16)

        def run(batch: torch.Tensor, sl: slice) -> None:
            tok = self._tokens(batch)
            for k, t in zip(range(sl.start, sl.stop), tok, strict=True):
                r, c = divmod(k, cols)
                grid[r * g:(r + 1) * g, c * g:(c + 1) * g] = t

        self._pipelined(image, corners, tile_um, run, progress)
        return grid, tile_um / g

    def embed_dense(self, image: TissueImage, points_rc_um: np.ndarray,
                    windows_um: Sequence[float], local_window_um: float | None = None,
                    *, progress: Progress | None = None, chunk_dims: int = 128) -> np.ndarray:
        """Dense embeddings from the patch-token grid: each window is the mean of the
        ``round(window / token)`` x same tokens around the point (box filter, sampled
        bilinearly); windows under 1.5 tokens take the token at the point. ``(M, S, D)``
        float32, S as in :func:`~napari_trihrge.features.base.dense_window_sizes`. Not
        interchangeable with :meth:`embed_windows` (CLS of a resized window): use one kind for
        both training and prediction."""
        from scipy import ndimage as ndi

        progress = ensure_progress(progress)
        pts = as_centres_rc_um(points_rc_um)
        sizes = dense_window_sizes(windows_um, local_window_um)
        m = len(pts)
        out = np.empty((m, len(sizes), self.embed_dim), dtype=np.float32)
        if m == 0:
            return out
        tile_um = self.input_px * self.native_um_per_px
        half = max(sizes) / 2.0 + tile_um / self.input_px * self.patch_px
        origin = np.floor((pts.min(0) - half) / tile_um) * tile_um
        shape = tuple(int(v) for v in np.ceil((pts.max(0) + half - origin) / tile_um))
        # the stage counts locations x windows: tiles only check for cancellation
        grid, tok_um = self.token_grid(image, origin, shape,
                                       progress=CancelOnlyProgress(progress))
        # token (i, j) is centred at origin + (i + 0.5, j + 0.5) * tok_um
        pos = (pts - origin[None, :]) / tok_um - 0.5
        for s, w in enumerate(sizes):
            k = int(round(w / tok_um))
            p = pos + (0.5 if k >= 2 and k % 2 == 0 else 0.0)  # even box: centre is i - 0.5
            for d0 in range(0, self.embed_dim, chunk_dims):
                progress.check_cancelled()
                block = grid[:, :, d0:d0 + chunk_dims].astype(np.float32)
                if k >= 2:
                    block = ndi.uniform_filter(block, size=(k, k, 1), mode="nearest")
                out[:, s, d0:d0 + chunk_dims] = _bilinear_rows(block, p)
            progress.advance(m)
        return out


def _bilinear_rows(grid: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``grid`` (H, W, D) interpolated at fractional (row, col) index positions (M, 2)."""
    gh, gw = grid.shape[:2]
    p = np.clip(pos, 0, [gh - 1, gw - 1])
    i0 = np.minimum(np.floor(p[:, 0]).astype(np.intp), max(gh - 2, 0))
    j0 = np.minimum(np.floor(p[:, 1]).astype(np.intp), max(gw - 2, 0))
    i1, j1 = np.minimum(i0 + 1, gh - 1), np.minimum(j0 + 1, gw - 1)
    fr = (p[:, 0] - i0)[:, None]
    fc = (p[:, 1] - j0)[:, None]
    return (grid[i0, j0] * (1 - fr) * (1 - fc) + grid[i1, j0] * fr * (1 - fc)
            + grid[i0, j1] * (1 - fr) * fc + grid[i1, j1] * fr * fc)
