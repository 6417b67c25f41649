"""The one model: CLIP ViT backbone with windowed attention, simple feature pyramid with Mix-FFN, NMS-free head."""
