"""Tiny random priors built in code, for tests and smoke runs: no downloads, seconds on a CPU.

Shapes mirror the real thing at toy scale: an f4 ``AutoencoderKL`` with 4 latent channels, and either an
unconditional ``UNet2DModel`` or a text-conditioned ``UNet2DConditionModel`` with a CLIP text encoder and a
character-level CLIP tokenizer whose vocabulary is written on the fly.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

from silo.priors.prior import Prior


def _tiny_tokenizer(max_length: int = 16):
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + " .,!?'-"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + [c for c in chars] + [c + "</w>" for c in chars]
    folder = Path(tempfile.mkdtemp(prefix="silo-tok-"))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    return tok


def tiny_prior(conditional: bool = False, seed: int = 0, latent_channels: int = 4) -> Prior:
    """A randomly initialised prior small enough for unit tests (images must be multiples of 8 px)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
    )
    text_encoder = tokenizer = None
    if conditional:
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = _tiny_tokenizer()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=latent_channels,
            out_channels=latent_channels,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=8,
        )
    else:
        unet = UNet2DModel(
            sample_size=8,
            in_channels=latent_channels,
            out_channels=latent_channels,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    name = "tiny-random-conditional" if conditional else "tiny-random"
    return Prior(vae, unet, scheduler, text_encoder, tokenizer, name=name)


def random_images(batch: int = 1, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (low-frequency noise, so JPEG and blur behave like on photos)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(batch, 3, max(2, size[0] // 8), max(2, size[1] // 8), generator=g)
    x = torch.nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return x * 2 - 1


# -- sampler contract: every registered method passes these (tests/test_sampler_contract.py) ----------------
#: the keys every sampler's per-step callback receives
CALLBACK_KEYS = {"step", "t", "z", "z0_hat", "loss"}


def contract_operator(prior: Prior, task: str = "sr4") -> torch.nn.Module:
    """A small random CNN operator for ``prior``: what operator-guided methods get in contract checks."""
    from silo.operators import CNNOperator

    torch.manual_seed(0)
    return (
        CNNOperator(
            latent_channels=prior.latent_channels, embedding_dim=prior.embedding_dim, channels=(8, 8, 8, 8), norm_size=8
        )
        .eval()
        .requires_grad_(False)
    )


def check_sampler_contract(
    method: str, prior: Prior, operator: torch.nn.Module | None = None, task: str = "sr4", steps: int = 2
) -> None:
    """Assert the sampler contract for one registered method: batch == single runs; a seed reproduces its
    result and another seed changes it; any size the prior takes; the callback once per step with
    :data:`CALLBACK_KEYS`; NaN in the measurement refused with the clear error. Raises AssertionError."""
    from silo.degradations.tasks import load_task
    from silo.errors import SiloError
    from silo.pipeline import restore
    from silo.samplers.registry import get_sampler
    from silo.settings import SamplerSettings

    spec = get_sampler(method)
    op = operator if spec.needs_operator else None
    deg_task = load_task(task)
    settings = SamplerSettings(steps=steps, eta=0.5)

    def run(x, seeds, callback=None, **kw):
        return restore(
            prior,
            deg_task,
            settings,
            seeds,
            reference=x,
            method=method,
            operator=op,
            param_seeds=seeds,
            show_progress=False,
            callback=callback,
            **kw,
        ).output

    x = random_images(2, (32, 32), seed=3)
    batch = run(x, [5, 6])
    assert batch.shape == x.shape and torch.isfinite(batch).all(), f"{method}: bad output"
    single = run(x[1:], [6])
    assert torch.allclose(batch[1:], single, atol=2e-4), f"{method}: a batch differs from single runs"
    assert torch.equal(run(x[:1], [5]), run(x[:1], [5])), f"{method}: a seed does not reproduce its result"
    assert not torch.allclose(run(x[:1], [5]), run(x[:1], [7])), f"{method}: the seed changes nothing"
    odd = random_images(1, (24, 40), seed=4)
    assert run(odd, [1]).shape == odd.shape, f"{method}: wrong output size for 24x40"
    seen: list[dict] = []
    run(x[:1], [1], callback=seen.append)
    assert len(seen) == settings.steps_run, f"{method}: {len(seen)} callbacks for {settings.steps_run} steps"
    assert all(set(info) >= CALLBACK_KEYS for info in seen), f"{method}: callback keys {sorted(seen[0])}"
    assert [info["step"] for info in seen] == list(range(settings.steps_run))
    bad = x[:1].clone()
    bad[..., :4, :4] = float("nan")
    try:
        run(bad, [1])
    except SiloError as err:
        assert "NaN or Inf" in str(err), f"{method}: unclear NaN error {err}"
    else:
        raise AssertionError(f"{method}: a NaN measurement was not refused")


def save_carded_models(prior: Prior, root: Path) -> None:
    """``root/prior`` (its card: 3 DDIM steps) and ``root/op`` (an sr4 CNN operator whose card tunes eta at
    32 px and a warm start of 0.7): a prior and an operator whose cards every front door must read alike."""
    prior.save_pretrained(root / "prior")
    card_path = root / "prior" / "silo_prior.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "default_steps": 3, "default_scheduler": "ddim"}))
    contract_operator(prior).save_pretrained(root / "op")
    op_card = {
        "task": "sr4",
        "kind": "cnn",
        "recommended_eta": 0.4,
        "recommended_eta_size": 32,
        "recommended_start_strength": 0.7,
    }
    (root / "op" / "model_card.json").write_text(json.dumps(op_card))
