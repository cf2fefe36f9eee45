"""Latent diffusion priors: any diffusers prior through :class:`Prior`, and the shipped silo-tiny."""

from silo.priors.prior import Prior, PromptEmbeddings

__all__ = ["Prior", "PromptEmbeddings"]
