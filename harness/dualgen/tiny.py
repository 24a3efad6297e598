"""A tiny Stable-Diffusion-2-shaped pipeline, built offline by our own code.

Same classes and the same wiring as stabilityai/stable-diffusion-2-base (UNet2DConditionModel with
linear attention projections, AutoencoderKL with 4 latent channels, CLIP text encoder with GELU,
CLIP BPE tokenizer, DDIM with the SD2-base schedule), only narrower, shallower and at 64 px.
Everything downstream (4-channel VAE, LoRA, losses, generation, MLflow) therefore runs the same code
on this model as on the real SD2; only the numbers are smaller.

`build_tiny_components` gives RANDOM weights (used by tests, and as the starting point of
`pretrain_tiny.build_tiny_base`, which trains them into the shipped base in harness/assets/tiny-sd2).
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

RESOLUTION = 64          # pixel size the tiny model is built for
MAX_TOKENS = 77          # CLIP context length, as in SD2
TEXT_HIDDEN = 32         # SD2's OpenCLIP-H: 1024

# Words that get whole-word BPE merges, so our prompts become short token sequences (about one token
# per word, like the real CLIP vocab). Any other text still tokenizes, one byte-level character per
# token: the vocab holds all 256 byte characters and their end-of-word forms, so there is never an
# unknown token.
_MERGE_TEXT = (
    "a dermoscopic lesion photo of for skin cancer diagnosis "
    # HAM10000 / ISIC class names and their usual spellings
    "melanoma melanocytic nevus nevi naevus basal cell carcinoma actinic keratosis keratoses "
    "benign seborrheic pigmented squamous dermatofibroma vascular lesions intraepithelial bowen "
    "disease solar lentigo lentigines atypical "
    # frequent words of clinical descriptions
    "with and the in asymmetric irregular border borders color colour brown dark light pink red "
    "blue black white network pattern dots globules structure scale regression area "
    # the rest of the demo dataset's descriptions (harness.data.demo)
    "an by few well defined poorly slightly regular small medium sized large uniform pigmentation "
    "waxy surface fissures pearly translucent arborizing vessels reddish scaly keratin purple lacunae "
    "separated septa peripheral central patch overlying hairs"
)
MERGE_WORDS = tuple(_MERGE_TEXT.split())


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------
def _byte_alphabet() -> list[str]:
    """The 256 characters GPT-2/CLIP byte-level BPE uses for the 256 byte values (sorted, fixed)."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _word_merges(words) -> list[tuple[str, str]]:
    """BPE merges learned on `words` (CLIP's `</w>` end-of-word convention) until every word is one token.

    Plain greedy BPE: merge the most frequent adjacent pair, ties broken alphabetically. Written out
    because tokenizers' BpeTrainer breaks ties differently from one process to the next, and the vocab
    ids must be the same on every build.
    """
    corpus = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in dict.fromkeys(words)]
    merges = []
    while True:
        counts = Counter(pair for symbols in corpus for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        corpus = [_merge_pair(symbols, best) for symbols in corpus]


def _merge_pair(symbols: tuple, pair: tuple) -> tuple:
    out, i = [], 0
    while i < len(symbols):
        if symbols[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer with a small vocab: byte characters, their `</w>` forms, our word merges."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = _word_merges(MERGE_WORDS)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        # transformers 5 takes vocab=/merges= as paths (or objects); files keep the format standard.
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        tok = CLIPTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                            model_max_length=MAX_TOKENS)
    return tok


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
def build_tiny_components(seed: int = 0) -> dict:
    """Random-weight tiny SD2: dict with unet, vae, text_encoder, tokenizer, scheduler."""
    tokenizer = build_tiny_tokenizer()

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="gelu",                       # SD2's OpenCLIP uses gelu (SD1's CLIP: quick_gelu)
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))

    # VAE downsampling: diffusers halves the size once per block after the first, so the factor is
    # 2**(len(block_out_channels)-1). Real SD2 uses 4 blocks (factor 8: 512 px -> 64x64 latents).
    # At 64 px a factor of 8 would leave 8x8 latents: too coarse to carry a lesion border and its mask,
    # and the UNet could not downsample twice. 3 blocks -> factor 4 -> 16x16 latents.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),         # SD2: (128, 256, 512, 512)
        layers_per_block=1,                      # SD2: 2
        latent_channels=4,
        norm_num_groups=8,                       # SD2: 32
        sample_size=RESOLUTION,
        scaling_factor=1.0,    # set from the latent std by pretrain_tiny (SD2: 0.18215)
    )

    latent_size = RESOLUTION // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size,                 # 16 -> the pipeline's default is 64 px
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),         # SD2: (320, 640, 1280, 1280)
        layers_per_block=1,                      # SD2: 2
        attention_head_dim=(1, 2, 2),            # SD2: (5, 10, 20, 20); diffusers reads it as the
                                                 # number of heads: 32 channels per head here, 64 in SD2
        cross_attention_dim=TEXT_HIDDEN,
        use_linear_projection=True,              # as SD2
        norm_num_groups=8,                       # SD2: 32
    )

    # SD2-base's scheduler settings (stabilityai/stable-diffusion-2-base/scheduler).
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
    for model in (unet, vae, text_encoder):
        model.eval()             # as from_pretrained returns them (train mode picks other SDPA kernels)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def build_sd2_shaped_components(seed: int = 0) -> dict:
    """SD2-base's architecture (stabilityai/stable-diffusion-2-base configs) with RANDOM weights, for
    memory and speed checks of the real sizes offline: the GPU check (bench/gpu.py) and the full-width
    CPU test. The tiny tokenizer and SD2-base's scheduler come from `build_tiny_components`; the tiny
    tokenizer's ids all fall inside SD2's vocabulary."""
    parts = build_tiny_components(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512))
    for model in (unet, vae, text_encoder):
        model.eval()
    return parts | {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def save_components(components: dict, folder) -> Path:
    """Write a diffusers StableDiffusionPipeline folder (model_index.json + one folder per part)."""
    folder = Path(folder)
    pipe = StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"], unet=components["unet"], scheduler=components["scheduler"],
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
