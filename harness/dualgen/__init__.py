"""SkinDualGen model core: base model, 4-channel VAE, LoRA, losses, generation.

    base.py           load_base("tiny" | folder | hub id), prompt embeddings
    vae4.py           widen the VAE to RGB + mask, encode / decode
    lora.py           LoRA on the UNet attention, save / load in diffusers' format
    losses.py         the paper's loss: diffusion MSE + BCE + Dice on the decoded mask (Eq. 5-8)
    pipeline.py       DualGenPipeline: prompts + seeds -> (RGB image, binary mask)
    tiny.py           a tiny SD2-shaped model built offline
    pretrain_tiny.py  pre-trains that tiny model into harness/assets/tiny-sd2
"""
