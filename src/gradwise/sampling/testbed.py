"""An exact test bed: Gaussian-mixture data whose noised density and ideal denoiser are known in closed form.

For data p_0 = sum_k w_k N(mu_k, C_k) in d dimensions, the noised density at level sigma is
p_sigma = sum_k w_k N(mu_k, C_k + sigma^2 I), and the ideal (minimum mean-square) denoiser is
  D(x, sigma) = sum_k r_k(x, sigma) [mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)],
  r_k(x, sigma) = w_k N(x; mu_k, C_k + sigma^2 I) / p_sigma(x)   (the posterior of mode k).
So a sampler's output can be judged without a trained network: mode weights, per-mode means and
covariances, and a sliced Wasserstein distance to exact samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class GaussianMixture:
    """Mixture of `K` Gaussians in `d` dimensions; the last axis of every input is the data axis.

    weights: (K,) positive; means: (K, d); covs: (K, d, d) symmetric positive definite. Parameters are kept in
    float64; the denoiser computes in float64 for float64 inputs and float32 otherwise and returns x's dtype.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        k, d = means.shape
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got shape {tuple(weights.shape)}")
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape {(k, d, d)}, got {tuple(covs.shape)}")
        eigvals, eigvecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(-1, -2)))
        if not bool((eigvals > 0).all()):
            raise ValueError("covs must be positive definite")
        self.weights, self.means, self.covs = weights / weights.sum(), means, covs
        self.eigvals, self.eigvecs = eigvals, eigvecs   # C_k = U diag(lambda) U^T
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def _params(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (dtype, device)
        if key not in self._cache:
            k, d = self.means.shape
            to_eigen = self.eigvecs.permute(1, 0, 2).reshape(d, k * d)       # x -> all modes' coordinates
            from_eigen = self.eigvecs.transpose(-1, -2).reshape(k * d, d)    # sum_k U_k c_k
            mean_coords = torch.einsum("kd,kde->ke", self.means, self.eigvecs)
            self._cache[key] = tuple(t.to(device=device, dtype=dtype) for t in (
                self.weights.log(), self.means, self.eigvals, to_eigen, from_eigen, mean_coords))
        return self._cache[key]

    def _posterior_terms(self, x: torch.Tensor, sigma: torch.Tensor | float):
        """Log posterior weights (..., K) and the eigen-coordinates of each mode's posterior-mean shift
        C_k (C_k + sigma^2 I)^-1 (x - mu_k), shape (..., K, d), at noise level sigma."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        log_w, _, lam, to_eigen, _, mean_coords = self._params(work, x.device)
        x = x.to(work)
        var = torch.as_tensor(sigma, dtype=work, device=x.device) ** 2
        var = var.reshape(var.shape + (1, 1)) if var.ndim else var          # broadcast over (K, d)
        coords = (x @ to_eigen).unflatten(-1, mean_coords.shape) - mean_coords   # U_k^T (x - mu_k)
        total = lam + var                                                  # eigenvalues of C_k + sigma^2 I
        log_det = torch.log(total).sum(-1)
        maha = (coords * coords / total).sum(-1)
        log_post = log_w - 0.5 * (maha + log_det + self.dim * math.log(2 * math.pi))
        return log_post, coords * (lam / total)

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """log p_sigma(x), shape x.shape[:-1]."""
        log_post, _ = self._posterior_terms(x, sigma)
        return torch.logsumexp(log_post, dim=-1)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact denoiser E[x_0 | x_sigma = x]; `sigma` is a number, a 0-d tensor or broadcastable
        against x.shape[:-1] + (1,)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have last dimension {self.dim}, got shape {tuple(x.shape)}")
        sigma = torch.as_tensor(sigma)
        if sigma.ndim:                      # (B, 1) or (B, ..., 1): drop the data axis for the K axis
            sigma = sigma.squeeze(-1)
        log_post, shift = self._posterior_terms(x, sigma)
        post = torch.softmax(log_post, dim=-1)
        _, mu, _, _, from_eigen, _ = self._params(post.dtype, x.device)
        return (post @ mu + (post.unsqueeze(-1) * shift).flatten(-2) @ from_eigen).to(x.dtype)

    __call__ = denoise

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie)."""
        return (self.denoise(x, sigma) - x) / torch.as_tensor(sigma, dtype=x.dtype) ** 2

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               stratified: bool = False) -> torch.Tensor:
        """n exact samples of p_0, shape (n, d). `stratified` draws exactly round(w_k n) from mode k (the
        remainder at random), which removes the mode-count noise from a reference set."""
        if stratified:
            counts = torch.floor(self.weights * n).to(torch.int64)
            rest = torch.multinomial(self.weights, n - int(counts.sum()), replacement=True, generator=generator)
            counts += torch.bincount(rest, minlength=self.num_modes)
            idx = torch.repeat_interleave(torch.arange(self.num_modes), counts)
        else:
            idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigvecs[idx] * self.eigvals[idx].sqrt().unsqueeze(-2)   # U diag(sqrt(lambda))
        return (self.means[idx] + torch.einsum("nde,ne->nd", scale, z)).to(dtype)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the mode with the highest posterior probability for each sample, shape x.shape[:-1]."""
        log_post, _ = self._posterior_terms(x.to(torch.float64), 0.0)
        return log_post.argmax(-1)

    def evaluate(self, x: torch.Tensor, reference: torch.Tensor | None = None, n_projections: int = 64,
                 seed: int = 0) -> SampleQuality:
        """Quality of samples x (..., d) against the mixture: see `SampleQuality`.

        The sliced Wasserstein distance is computed against `reference` (exact samples; when None, as many
        stratified exact samples as x has, drawn with `seed`). SW_2 is sensitive to mode weights: moving a
        fraction dw of mass between modes a distance r apart costs about r sqrt(dw), so the Monte-Carlo
        weight noise of n samples sets its floor (`sliced_wasserstein_floor`)."""
        x = x.reshape(-1, self.dim).to(torch.float64)
        labels = self.assign(x)
        counts = torch.bincount(labels, minlength=self.num_modes).to(torch.float64)
        weights = counts / counts.sum()
        mean_err, cov_err = 0.0, 0.0
        for k in range(self.num_modes):
            members = x[labels == k]
            if members.shape[0] < 2:
                mean_err, cov_err = math.inf, math.inf
                continue
            mean_err = max(mean_err, float((members.mean(0) - self.means[k]).abs().max()))
            cov = torch.cov(members.T).reshape(self.dim, self.dim)
            cov_err = max(cov_err, float((cov - self.covs[k]).abs().max()))
        gen = torch.Generator().manual_seed(seed)
        if reference is None:
            reference = self.sample(x.shape[0], generator=gen, stratified=True)
        reference = reference.reshape(-1, self.dim).to(torch.float64)
        sw = sliced_wasserstein(x, reference, n_projections, gen)
        threshold = torch.quantile(-self.log_prob(reference), 0.99)
        outliers = float((-self.log_prob(x) > threshold).to(torch.float64).mean())
        return SampleQuality(weight_error=float((weights - self.weights).abs().max()), mean_error=mean_err,
                             cov_error=cov_err, sliced_wasserstein=sw, outlier_rate=outliers, weights=weights)


    def sliced_wasserstein_floor(self, n: int, repeats: int = 3, seed: int = 100) -> float:
        """Mean SW_2 between `n` independent exact samples and the stratified reference `evaluate` uses: what
        a perfect sampler scores with n samples."""
        values = [self.evaluate(self.sample(n, torch.Generator().manual_seed(seed + r))).sliced_wasserstein
                  for r in range(repeats)]
        return sum(values) / repeats


@dataclass(frozen=True)
class SampleQuality:
    """weight_error: max_k |fraction of samples assigned to mode k - w_k|; mean_error: max over modes and
    coordinates of |sample mean - mu_k|; cov_error: the same for covariances; sliced_wasserstein: SW_2 to
    exact samples; outlier_rate: fraction of samples less likely under p_0 than 99% of exact samples (0.01
    for a perfect sampler; divergence artifacts push it up); weights: the fractions themselves."""

    weight_error: float
    mean_error: float
    cov_error: float
    sliced_wasserstein: float
    outlier_rate: float
    weights: torch.Tensor


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 64,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of x (n, d) and y (m, d):
    sqrt(mean over random unit directions theta of W_2^2(theta.x, theta.y)), each 1-D W_2 from quantiles
    (sorted projections, the larger set interpolated down to the smaller one's size)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x.to(torch.float64) @ theta, dim=0)
    py, _ = torch.sort(y.to(torch.float64) @ theta, dim=0)
    n = min(px.shape[0], py.shape[0])
    px, py = _quantiles(px, n), _quantiles(py, n)
    return float(((px - py) ** 2).mean().sqrt())


def _quantiles(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    if sorted_values.shape[0] == n:
        return sorted_values
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.quantile(sorted_values, levels, dim=0)


def _random_rotation(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def easy_mixture(d: int = 2, seed: int = 0) -> GaussianMixture:
    """Three well-separated, roughly isotropic modes with unequal weights (0.5, 0.3, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(3, d, generator=gen, dtype=torch.float64)
    means = 2.5 * means / means.norm(dim=1, keepdim=True)
    covs = torch.stack([s * torch.eye(d, dtype=torch.float64) for s in (0.25, 0.16, 0.36)])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, covs)


def ill_conditioned_mixture(d: int = 4, seed: int = 0) -> GaussianMixture:
    """Two modes of very different scales (std 0.03 and 1.0) whose covariances are also anisotropic
    (condition number 100), weights (0.4, 0.6)."""
    gen = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, d, dtype=torch.float64)
    covs = []
    for scale in (0.03 ** 2, 1.0):
        rot = _random_rotation(d, gen)
        covs.append(scale * rot @ torch.diag(spectrum) @ rot.T)
    means = torch.zeros(2, d, dtype=torch.float64)
    means[0, 0], means[1, 0] = -2.0, 2.0
    return GaussianMixture(torch.tensor([0.4, 0.6]), means, torch.stack(covs))


def high_dim_mixture(d: int = 64, num_modes: int = 4, seed: int = 0) -> GaussianMixture:
    """`num_modes` modes in d dimensions with random means of norm 4, random covariances with eigenvalues
    in [0.05, 0.5] and Dirichlet-like weights."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_modes, d, generator=gen, dtype=torch.float64)
    means = 4.0 * means / means.norm(dim=1, keepdim=True)
    covs = []
    for _ in range(num_modes):
        rot = _random_rotation(d, gen)
        spectrum = 0.05 + 0.45 * torch.rand(d, generator=gen, dtype=torch.float64)
        covs.append(rot @ torch.diag(spectrum) @ rot.T)
    weights = torch.rand(num_modes, generator=gen, dtype=torch.float64) + 0.5
    return GaussianMixture(weights, means, torch.stack(covs))
